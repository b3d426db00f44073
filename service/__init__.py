"""service: the HTTP service (Flask + gunicorn) around `attngan.pipeline.TextToImage`.

`service.app:create_app()` is the WSGI app; `service/gunicorn_conf.py` the server configuration; see README.md here.
"""
