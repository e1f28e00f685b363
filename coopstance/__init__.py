"""coopstance: tag news sentences with cooperation topics and stance toward China.

    from coopstance import Tagger
    tagger = Tagger("outputs/mbert/model")
    for s in tagger.tag_article(open("article.txt").read()): print(s.topics, s.stance, s.text)
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Tagger"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import coopstance.config` does not pull in torch and transformers.
    if name == "Tagger":
        from coopstance.inference import Tagger

        return Tagger
    raise AttributeError(name)
