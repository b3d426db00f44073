"""Each metric on cases with known answers."""

import numpy as np
import pytest
import torch
from torch import nn

from attngan.errors import AttnGANError
from trainer.evaluate.complexity import child_flops, count_flops, count_parameters, flops_per_scale
from trainer.evaluate.fid import (
    FeatureStats,
    feature_stats,
    fid_from_features,
    frechet_distance,
    inception_score,
)
from trainer.evaluate.rprecision import fold_stats, r_precision, sample_mismatched


def test_seed_diversity_known_answers():
    from trainer.evaluate.diversity import at_size, mean_pairwise_l1

    same = torch.rand(3, 1, 3, 8, 8).expand(3, 4, 3, 8, 8)  # every seed the same image: collapse
    assert mean_pairwise_l1(same) == 0.0
    black_white = torch.stack([-torch.ones(3, 8, 8), torch.ones(3, 8, 8)])[None]  # the farthest two images can be
    assert mean_pairwise_l1(black_white) == pytest.approx(255.0)
    levels = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1, 1).expand(1, 3, 3, 4, 4)  # pairs 127.5, 255, 127.5
    assert mean_pairwise_l1(levels) == pytest.approx(170.0)
    two_groups = torch.cat([same[:1, :2], black_white])  # the mean over groups
    assert mean_pairwise_l1(two_groups) == pytest.approx(127.5)
    assert at_size(torch.ones(2, 3, 256, 256) * 2).shape == (2, 3, 64, 64)  # clamped to [-1, 1] and resized
    assert at_size(torch.ones(2, 3, 256, 256) * 2).max() == 1.0
    uneven = [black_white[0], levels[0]]  # groups of 2 and 3 images (species with fewer test images)
    assert mean_pairwise_l1(uneven) == pytest.approx((255.0 + 170.0) / 2)
    with pytest.raises(AttnGANError, match="at least 2 images"):
        mean_pairwise_l1(torch.rand(5, 1, 3, 8, 8))


def test_fid_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 16))
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-6)


def test_fid_matches_closed_form_for_gaussians():
    # Diagonal covariances: FID = |mu1-mu2|^2 + sum (s1 + s2 - 2 sqrt(s1 s2)).
    a = FeatureStats(mu=np.array([0.0, 0.0, 1.0]), sigma=np.diag([1.0, 4.0, 9.0]), n=0)
    b = FeatureStats(mu=np.array([1.0, 2.0, 1.0]), sigma=np.diag([4.0, 1.0, 9.0]), n=0)
    expected = (1 + 4 + 0) + (1 + 4 - 4) + (4 + 1 - 4) + 0
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_fid_grows_with_shift_and_is_symmetric():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 8))
    y = rng.normal(size=(400, 8))
    near, far = fid_from_features(x, y), fid_from_features(x, y + 3.0)
    assert near < 1.0 < far
    assert far == pytest.approx(fid_from_features(y + 3.0, x), rel=1e-6)
    assert far == pytest.approx(8 * 9.0, rel=0.1)  # mean shift of 3 in 8 dims dominates


def test_feature_stats_rejects_too_few_rows():
    with pytest.raises(AttnGANError):
        feature_stats(np.zeros((1, 4)))


def test_feature_stats_round_trip(tmp_path):
    s = feature_stats(np.random.default_rng(0).normal(size=(20, 3)))
    s.save(tmp_path / "s.npz")
    t = FeatureStats.load(tmp_path / "s.npz")
    assert t.n == 20 and np.allclose(t.mu, s.mu) and np.allclose(t.sigma, s.sigma)


def test_inception_score_uniform_is_one_and_confident_is_num_classes():
    assert inception_score(np.full((100, 10), 0.1))[0] == pytest.approx(1.0)
    onehot = np.eye(10)[np.arange(100) % 10]
    mean, std = inception_score(onehot, splits=10)
    assert mean == pytest.approx(10.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)


def test_mismatched_captions_come_from_other_classes():
    classes = np.repeat(np.arange(5), 4)
    mis = sample_mismatched(classes, 99, np.random.default_rng(0))
    assert mis.shape == (20, 99)
    assert (classes[mis] != classes[:, None]).all()
    with pytest.raises(AttnGANError):
        sample_mismatched(np.zeros(5, dtype=int), 3, np.random.default_rng(0))


def test_r_precision_perfect_matcher_is_one():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(300, 32))
    classes = np.arange(300) % 30
    res = r_precision(text.copy(), text, classes)
    assert res["mean"] == 1.0 and res["std"] == 0.0 and res["candidates"] == 100


def test_r_precision_shuffled_is_chance():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(3000, 32))
    images = text[rng.permutation(3000)]
    classes = np.arange(3000) % 50
    res = r_precision(images, text, classes)
    assert 0.0 <= res["mean"] < 0.03  # chance is 1 in 100


def test_r_precision_constant_encoder_scores_zero():
    text = np.ones((50, 4))
    assert r_precision(np.ones((50, 4)), text, np.arange(50) % 5)["mean"] == 0.0


def test_fold_stats():
    hits = np.array([1] * 10 + [0] * 10)
    mean, std = fold_stats(hits, folds=2)
    assert mean == 0.5 and std == 0.5
    with pytest.raises(AttnGANError):
        fold_stats(hits[:5], folds=10)


def test_flop_counter_matches_hand_counts():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    total, _ = count_flops(lambda: conv(torch.randn(2, 3, 16, 16)))
    assert total == 2 * (2 * 8 * 16 * 16) * (3 * 3 * 3)  # 2 FLOPs per multiply-add, per output element
    lin = nn.Linear(10, 5)
    total, _ = count_flops(lambda: lin(torch.randn(4, 10)))
    assert total == 2 * 4 * 10 * 5
    assert count_parameters(lin) == 55 and count_parameters(conv) == 8 * 27


class _ThreeStage(nn.Module):
    def __init__(self):
        super().__init__()
        self.ca_net = nn.Linear(4, 4, bias=False)
        self.h_net1 = nn.Linear(4, 8, bias=False)
        self.h_net2 = nn.Linear(8, 8, bias=False)
        self.img_net1 = nn.Linear(8, 2, bias=False)
        self.img_net2 = nn.Linear(8, 2, bias=False)

    def forward(self, x):
        h = self.h_net1(self.ca_net(x))
        return self.img_net1(h), self.img_net2(self.h_net2(h))


def test_flops_per_scale_is_cumulative_by_stage():
    net = _ThreeStage()
    total, per_module = count_flops(lambda: net(torch.randn(1, 4)))
    children = child_flops(per_module, "_ThreeStage")
    assert children == {"ca_net": 32, "h_net1": 64, "h_net2": 128, "img_net1": 32, "img_net2": 32}
    scales = flops_per_scale(children, [64, 128])
    assert scales == {"64": 32 + 64 + 32, "128": total}


def test_lstm_flops_formula():
    from trainer.evaluate.complexity import lstm_flops

    lstm = nn.LSTM(300, 128, batch_first=True, bidirectional=True)
    # per step and direction: 4 gates x 128 units x (300 inputs + 128 recurrent) multiply-adds, x2 FLOPs
    assert lstm_flops(lstm, seq_len=18) == 18 * 2 * 2 * 4 * 128 * (300 + 128)


def test_faithfulness_accuracy_and_judge():
    from trainer.evaluate.faithfulness import IGNORE, encode_labels, per_part_accuracy

    parts = {"crown": ["red", "blue"], "belly": ["white", "buff", "grey"]}
    labels = encode_labels([{"crown": "red", "belly": "grey"}, {"crown": "blue"}, {"belly": "purple"}], parts)
    assert labels.tolist() == [[0, 2], [1, IGNORE], [IGNORE, IGNORE]]
    pred = torch.tensor([[0, 1], [1, 0], [0, 0]])
    res = per_part_accuracy(pred, labels, parts)
    assert res["per_part"] == {"crown": 1.0, "belly": 0.0} and res["accuracy"] == pytest.approx(2 / 3)
    assert res["counts"] == {"crown": 2, "belly": 1}


def test_attribute_classifier_learns_colours_and_caches(tmp_path):
    """A flat-colour toy: the judge must learn it perfectly, and the cache must round-trip."""
    from trainer.evaluate.faithfulness import get_classifier, judge, load_classifier, predict

    torch.manual_seed(0)
    parts = {"crown": ["red", "green", "blue"]}
    n = 96
    y = torch.arange(n) % 3
    x = -torch.ones(n, 3, 64, 64)
    for i in range(n):
        x[i, y[i], 8:24, 16:48] = 1.0  # the "crown" patch in that colour channel
    cached = get_classifier(tmp_path, tmp_path, x, y[:, None], x[:30], y[:30, None], parts, key="k",
                            epochs=25, progress=False)
    assert cached.meta["held_out"]["accuracy"] == 1.0
    names = [{"crown": parts["crown"][int(c)]} for c in y[:30]]
    assert judge(cached.model, x[:30], names)["accuracy"] == 1.0
    again = load_classifier(tmp_path / "attribute_classifier.safetensors")
    assert again is not None and again.meta["key"] == "k"
    assert torch.equal(predict(again.model, x[:30]), predict(cached.model, x[:30]))


def test_attribute_oracle_counts_ties_and_contradictions():
    from trainer.evaluate.rprecision import attribute_oracle_hits

    truth = [{"crown": "red", "wing": "blue"}] * 3
    named = [{"crown": "red", "wing": "blue"},  # item 0: its own caption names both, the others fewer or wrong
             {"crown": "red"},                 # item 1: "red crown" alone ties with item 2's caption
             {"crown": "red"}]
    mismatched = np.array([[1, 2], [2, 0], [1, 0]])
    hits = attribute_oracle_hits(named, truth, mismatched)
    # item 0 beats both one-attribute captions; item 1 ties item 2 and loses to item 0's two attributes
    assert hits.tolist() == [1.0, 0.0, 0.0]
    # one contradiction outweighs naming more right attributes; an exact tie is a coin flip (expected 0.5)
    truth = [{"crown": "red", "wing": "blue", "tail": "black"}]
    named = [{"crown": "red"}, {"crown": "red", "wing": "blue", "tail": "white"}, {"wing": "blue"}]
    assert attribute_oracle_hits(named, truth, np.array([[1, 2]])).tolist() == [0.5]
    assert attribute_oracle_hits(named, truth, np.array([[1, 1]])).tolist() == [1.0]
