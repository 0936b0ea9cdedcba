"""Build the bundled sample feeds from ../shared/data/seed_papers.json (run once; outputs are committed).

The papers are real titles and abstracts; arXiv ids, authors and categories are made up
deterministically (ids 2611.1xxxx, categories from keywords) in the exact shapes of
../shared/FORMATS.md, so the demo and the tests exercise the real parsing paths.

    python scripts/make_feeds.py
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT.parent / "shared" / "data" / "seed_papers.json"
ANNOUNCED = dt.datetime(2026, 11, 23, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5)))

FIRST = ["Ada", "Alan", "Grace", "Yann", "Fei", "Andrew", "Daphne", "Geoffrey", "Yoshua", "Cynthia", "Jürgen",
         "Demis", "Ilya", "Percy", "Chelsea", "Sergey", "Ruslan", "Jia", "Kaiming", "Oriol", "Mira", "Timnit",
         "Emily", "Noam", "Ashish", "Jakob", "Łukasz", "Aidan", "Niki", "Illia", "Zoubin", "Bernhard"]
LAST = ["Lovelace", "Turing", "Hopper", "Okafor", "Nakamura", "Schmidt", "Rossi", "Dubois", "Kowalski", "Silva",
        "Chen", "Wang", "Kim", "Singh", "Müller", "García", "Ivanova", "Haddad", "O'Brien", "Tanaka", "Novak",
        "Larsen", "Moreau", "Petrov", "Costa", "Yilmaz", "Nguyen", "Fischer", "Romano", "Andersson"]
CATEGORY_WORDS = [
    ("cs.CL", ("language model", "llm", "text", "token", "translation", "linguistic", "reasoning", "question answering")),
    ("cs.CV", ("image", "video", "visual", "vision", "pixel", "segmentation", "3d", "diffusion")),
    ("cs.RO", ("robot", "manipulation", "locomotion", "embodied", "navigation")),
    ("cs.SE", ("software", "code generation", "program", "repository", "developer")),
    ("cs.CR", ("attack", "security", "privacy", "adversarial", "jailbreak")),
    ("cs.IR", ("retrieval", "recommend", "search engine", "ranking")),
    ("stat.ML", ("bayesian", "statistical", "variational", "gaussian process")),
    ("eess.AS", ("speech", "audio", "acoustic", "music")),
]


def pick(options: list[str], seed: str) -> str:
    return options[int(hashlib.sha256(seed.encode()).hexdigest(), 16) % len(options)]


def authors(index: int) -> list[str]:
    count = 1 + index % 7  # some papers have six or seven authors, for "et al." rendering
    return [f"{pick(FIRST, f'f{index}.{k}')} {pick(LAST, f'l{index}.{k}')}" for k in range(count)]


def categories(paper: dict) -> list[str]:
    text = (paper["title"] + " " + paper["abstract"]).lower()
    found = [cat for cat, words in CATEGORY_WORDS if any(w in text for w in words)]
    return (found or ["cs.LG"])[:2] + (["cs.LG"] if "cs.LG" not in found[:2] else []) + ["cs.AI"]


def rss_item(index: int, paper: dict) -> str:
    arxiv_id = f"2611.{10000 + index}"
    announce = "cross" if index % 9 == 4 else "new"
    cats = "".join(f"\n  <category>{c}</category>" for c in categories(paper))
    return f"""<item>
  <title>{escape(paper['title'])}</title>
  <link>https://arxiv.org/abs/{arxiv_id}</link>
  <description>arXiv:{arxiv_id}v1 Announce Type: {announce}
Abstract: {escape(paper['abstract'])}</description>
  <guid isPermaLink="false">oai:arXiv.org:{arxiv_id}v1</guid>{cats}
  <pubDate>{format_datetime(ANNOUNCED)}</pubDate>
  <arxiv:announce_type>{announce}</arxiv:announce_type>
  <dc:rights>http://creativecommons.org/licenses/by/4.0/</dc:rights>
  <dc:creator>{escape(', '.join(authors(index)[:-1]) + ' and ' + authors(index)[-1] if len(authors(index)) > 1 else authors(index)[0])}</dc:creator>
</item>"""


def rss(items: list[str], title: str) -> str:
    return f"""<?xml version='1.0' encoding='UTF-8'?>
<rss xmlns:arxiv="http://arxiv.org/schemas/atom" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:atom="http://www.w3.org/2005/Atom" xmlns:content="http://purl.org/rss/1.0/modules/content/" version="2.0">
<channel>
<title>{title}</title>
<link>http://rss.arxiv.org/rss/cs.LG</link>
<description>{title}</description>
<atom:link href="https://rss.arxiv.org/rss/cs.LG" rel="self" type="application/rss+xml"/>
<docs>http://www.rssboard.org/rss-specification</docs>
<language>en-us</language>
<lastBuildDate>{format_datetime(ANNOUNCED)}</lastBuildDate>
<managingEditor>rss-help@arxiv.org</managingEditor>
<pubDate>{format_datetime(ANNOUNCED)}</pubDate>
<skipDays>
<day>Saturday</day>
<day>Sunday</day>
</skipDays>
{chr(10).join(items)}
</channel>
</rss>
"""


def api_entry(index: int, paper: dict) -> str:
    arxiv_id = f"2611.{10000 + index}"
    cats = categories(paper)
    names = "".join(f"\n    <author>\n      <name>{escape(n)}</name>\n    </author>" for n in authors(index))
    terms = "".join(f'\n    <category term="{c}" scheme="http://arxiv.org/schemas/atom"/>' for c in cats)
    stamp = ANNOUNCED.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"""  <entry>
    <id>http://arxiv.org/abs/{arxiv_id}v2</id>
    <updated>{stamp}</updated>
    <published>{stamp}</published>
    <title>{escape(paper['title'])}</title>
    <summary>  {escape(paper['abstract'])}
</summary>{names}
    <arxiv:comment xmlns:arxiv="http://arxiv.org/schemas/atom">12 pages, 4 figures</arxiv:comment>
    <link href="http://arxiv.org/abs/{arxiv_id}v2" rel="alternate" type="text/html"/>
    <link title="pdf" href="http://arxiv.org/pdf/{arxiv_id}v2" rel="related" type="application/pdf"/>
    <arxiv:primary_category xmlns:arxiv="http://arxiv.org/schemas/atom" term="{cats[0]}" scheme="http://arxiv.org/schemas/atom"/>{terms}
  </entry>"""


def atom(entries: list[str]) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <link href="http://arxiv.org/api/query?search_query%3Dcat%3Acs.LG%26id_list%3D%26start%3D0%26max_results%3D{len(entries)}" rel="self" type="application/atom+xml"/>
  <title type="html">ArXiv Query: search_query=cat:cs.LG&amp;id_list=&amp;start=0&amp;max_results={len(entries)}</title>
  <id>http://arxiv.org/api/cHxbiOdZaP56ODnBPIenZhzg5f8</id>
  <updated>2026-11-23T00:00:00-05:00</updated>
  <opensearch:totalResults xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">{len(entries)}</opensearch:totalResults>
  <opensearch:startIndex xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">0</opensearch:startIndex>
  <opensearch:itemsPerPage xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">{len(entries)}</opensearch:itemsPerPage>
{chr(10).join(entries)}
</feed>
"""


def hf_element(index: int, paper: dict, upvotes: int) -> dict:
    """One element of the trending-papers API, with the optional fields present on some papers only."""
    arxiv_id = f"2611.{10000 + index}"
    first_sentence = paper["abstract"].split(". ")[0].rstrip(".") + "."
    inner = {"id": arxiv_id, "authors": [{"name": n} for n in authors(index)],
             "publishedAt": "2026-11-23T17:59:00.000Z", "title": paper["title"], "summary": paper["abstract"],
             "upvotes": upvotes}
    if index % 2 == 0:
        inner["ai_summary"] = first_sentence
        inner["ai_keywords"] = [w for w in paper["title"].split()[:3]]
    if index % 3 == 0:
        inner["githubRepo"] = f"https://github.com/example-lab/paper-{index}"
        inner["githubStars"] = 10 * index
    if index % 5 == 0:
        inner["projectPage"] = f"https://example-lab.github.io/paper-{index}/"
    return {"paper": inner, "publishedAt": "2026-11-23T17:59:00.000Z", "title": paper["title"],
            "summary": paper["abstract"], "numComments": index % 4, "submittedBy": {"name": "curator"}}


def main() -> None:
    papers = json.loads(SEED.read_text())
    demo = ROOT / "newsletter" / "demo_data"
    fixtures = ROOT / "tests" / "fixtures"
    demo.mkdir(exist_ok=True)
    fixtures.mkdir(exist_ok=True)
    (demo / "arxiv_sample.rss").write_text(rss([rss_item(i, p) for i, p in enumerate(papers)], "cs.LG updates on arXiv.org"))
    (fixtures / "arxiv_cs_lg.rss").write_text(rss([rss_item(i, p) for i, p in enumerate(papers[:60])], "cs.LG updates on arXiv.org"))
    (fixtures / "arxiv_weekend.rss").write_text(rss([], "cs.LG updates on arXiv.org"))
    (fixtures / "arxiv_api.atom").write_text(atom([api_entry(i, p) for i, p in enumerate(papers[50:70], start=50)]))
    # Trending: ten papers of the test feed plus five it does not list; upvotes fall with rank.
    trending = [hf_element(i, papers[i], 120 - 7 * n) for n, i in enumerate([*range(0, 20, 2), *range(200, 205)])]
    (fixtures / "hf_daily.json").write_text(json.dumps(trending, indent=1, ensure_ascii=False))
    demo_trending = [hf_element(i, papers[i], 150 - 4 * n) for n, i in enumerate(range(3, 211, 7))]
    (demo / "hf_daily_sample.json").write_text(json.dumps(demo_trending, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
