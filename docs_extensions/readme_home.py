"""A mkdocs hook: the site's home page is the README, written once.

`docs/index.md` is a placeholder; this serves `README.md` in its place, its
links into `docs/` made relative to the site (`](docs/methods.md)` becomes
`](methods.md)`), so the front page on GitHub and on the site are one text.
"""

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "index.md":
        return markdown
    return README.read_text(encoding="utf-8").replace("](docs/", "](")
