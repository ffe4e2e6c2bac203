"""The Flask side of flask-dbpool: the only package that imports Flask."""

from flask_dbpool.flask.extension import DBPool

__all__ = ["DBPool"]
