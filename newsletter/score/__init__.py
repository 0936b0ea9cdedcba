"""Score: papers × subscriber profiles → ranked picks with reasons. Pure: no database, no network."""

from newsletter.score.lexical import PaperIndex, rank_papers

__all__ = ["PaperIndex", "rank_papers"]
