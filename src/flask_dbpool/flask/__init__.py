"""The Flask side of flask-dbpool: the only package that imports Flask."""

from flask_dbpool.flask.extension import DBPool
from flask_dbpool.flask.monitor import monitor

__all__ = ["DBPool", "monitor"]
