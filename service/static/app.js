// The web page: POST the caption to the API, show the three scales and the attention maps, or the error.
"use strict";

const form = document.getElementById("caption-form");
const captionBox = document.getElementById("caption");
const seedBox = document.getElementById("seed");
const truncationBox = document.getElementById("truncation");
const keyBox = document.getElementById("api-key");
const button = document.getElementById("generate");
const errorBox = document.getElementById("error");
const statusBox = document.getElementById("status");
const result = document.getElementById("result");
const words = document.getElementById("words");

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function chip(text, cls) {
  const span = document.createElement("span");
  span.className = cls;
  span.textContent = text;
  return span;
}

async function draw() {
  errorBox.hidden = true;
  statusBox.textContent = "Drawing…";
  button.disabled = true;
  const body = { caption: captionBox.value };
  if (seedBox.value !== "") body.seed = Number(seedBox.value);
  body.truncation = Number(truncationBox.value);
  const headers = { "Content-Type": "application/json" };
  if (keyBox && keyBox.value) headers["X-API-Key"] = keyBox.value;
  try {
    const response = await fetch("/api/v1.0/bird", { method: "POST", headers, body: JSON.stringify(body) });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const message = data && data.error ? data.error.message : `the service answered ${response.status}`;
      const retry = response.headers.get("Retry-After");
      showError(message + (retry ? ` (try again in ${retry} s)` : ""));
      statusBox.textContent = "";
      return;
    }
    const bird = data.bird;
    for (const name of ["small", "medium", "large", "map1", "map2"]) {
      const img = document.getElementById(`img-${name}`);
      img.parentElement.hidden = !bird[name];
      if (bird[name]) img.src = bird[name];
    }
    words.replaceChildren(
      ...bird.tokens.map((t) => chip(t, "token")),
      ...bird.unknown.map((t) => chip(t, "unknown")),
    );
    if (bird.unknown.length) words.title = "struck-out words are not in the model's vocabulary and were ignored";
    result.hidden = false;
    const where = bird.storage === "inline" ? " (storage unavailable: images inline)" : "";
    const draws = [];
    if (bird.candidates > 1) draws.push(`best of ${bird.candidates} draws`);
    if (bird.truncation !== undefined && bird.truncation < 1) draws.push(`truncation ${bird.truncation}`);
    const bestOf = draws.length ? ` (${draws.join(", ")})` : "";
    statusBox.textContent = `seed ${bird.seed}${bestOf}, ${bird.cached ? "from cache" : "drawn"} in ` +
      `${bird.elapsed.toFixed(2)} s${where}`;
  } catch (e) {
    showError(`could not reach the service: ${e.message}`);
    statusBox.textContent = "";
  } finally {
    button.disabled = false;
  }
}

form.addEventListener("submit", (event) => { event.preventDefault(); draw(); });
captionBox.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); draw(); }
});
for (const example of document.querySelectorAll("button.example")) {
  example.addEventListener("click", () => { captionBox.value = example.textContent.trim(); draw(); });
}
