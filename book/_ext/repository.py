"""Sphinx extension: the repository's address, written once (`repository: url:` in _config.yml, which Jupyter Book
hands to the theme as ``repository_url``), for the pages: the MyST substitutions ``{{ repository }}``,
``{{ issues }}`` and ``{{ pages }}`` (links to the repository, its issues and its GitHub Pages address)."""
from __future__ import annotations

from urllib.parse import urlparse


def pages_url(repository_url: str) -> str:
    """GitHub Pages address of a GitHub repository: github.com/OWNER/NAME -> owner.github.io/NAME/ (https)."""
    owner, name = urlparse(repository_url).path.strip("/").split("/")[:2]
    return f"https://{owner.lower()}.github.io/{name}/"


def link(url: str) -> str:
    return f"[{url}]({url})"


def add_substitutions(app, config) -> None:
    url = config.html_theme_options["repository_url"].rstrip("/")
    config.myst_substitutions = {**config.myst_substitutions, "repository": link(url),
                                 "issues": link(f"{url}/issues"), "pages": link(pages_url(url))}


def setup(app):
    app.connect("config-inited", add_substitutions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
