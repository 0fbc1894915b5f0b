#!/usr/bin/env python3
"""Regenerates the tokenizer parity fixtures (tests/fixtures/tokenizers/) and, with
--tables, the Unicode tables (client/train/tokenizer/unicode_tables.cc).

Needs the PyPI `tokenizers` package:
  /work/main/.venv/bin/pip install tokenizers
  /work/main/.venv/bin/python scripts/make_tokenizer_fixtures.py          # fixtures
  /work/main/.venv/bin/python scripts/make_tokenizer_fixtures.py --tables # C++ tables

The --tables mode probes `tokenizers` itself, code point by code point, so the C++ tables
follow the Unicode data inside its Rust crates rather than Python's unicodedata.

Trains a small WordPiece vocab (BERT normalizer, lowercase + strip accents) and a small
byte-level BPE on a built-in multilingual corpus, saves their files, and writes
expected.jsonl: the ids, type ids and masks Hugging Face produces for a test corpus.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizers")

TRAIN_BASE = """\
The quick brown fox jumps over the lazy dog.
Hello, world! How are you doing today?
It's a beautiful day; isn't it? We'll see, they've said, I'm sure you'd agree.
Machine learning models need lots of data (and patience).
Email me at someone@example.com or visit https://example.org/path?q=1&x=2.
The price is $19.99, down from $25.00 -- a 20% discount!
In 2023, over 1,000,000 people visited the museum.
Call 555-0199 before 9:30 a.m. on Monday, March 3rd.
Training a tokenizer is simple: count pairs, merge the most frequent, repeat.
"Quoted text" and 'single quotes' are common in English prose.
Le café est très bon, n'est-ce pas ? Où est la bibliothèque ?
J'ai mangé une crème brûlée à Noël avec ma sœur.
L'élève a réussi l'examen de français grâce à son travail.
Die Straße ist sehr schön, und die Bäume sind grün.
Über den Wolken muss die Freiheit wohl grenzenlos sein.
Größere Häuser kosten mehr Geld; Äpfel und Öl sind günstig.
El niño comió una manzana en la mañana. ¿Dónde está el baño?
¡Qué día tan bonito! La canción es muy famosa en España.
Los pingüinos viven en la Antártida y nadan rápido.
Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.
Καλημέρα σας! Πώς είστε σήμερα; Η Αθήνα είναι όμορφη.
Быстрая коричневая лиса прыгает через ленивую собаку.
Привет, мир! Как дела? Москва — столица России.
Я люблю читать книги и пить чай по вечерам.
我爱自然语言处理。今天天气很好！
北京是中国的首都，上海是最大的城市。
机器学习需要大量的数据和计算资源。
日本語のテキストも処理できます。東京は大きな都市です。
カタカナとひらがなと漢字が混ざっています。
おはようございます！今日はいい天気ですね。
안녕하세요! 만나서 반갑습니다.
한국어 문장도 토큰화할 수 있습니다. 서울은 큰 도시입니다.
Emoji are fun 😀🎉👍 and hearts ❤️ too!
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 2.71828
Version v1.2.3 released on 2024-01-15 at 10:45:00 UTC.
Path C:\\Users\\name\\file.txt and /usr/local/bin/python3.
Symbols: @#$%^&*()_+-=[]{}|;':",./<>?`~
Tabs\tand\tnewlines are whitespace too.
Naïve façade résumé coöperate jalapeño piñata.
ÀÁÂÃÄÅ àáâãäå ÈÉÊË èéêë ÌÍÎÏ ìíîï ÒÓÔÕÖ òóôõö ÙÚÛÜ ùúûü Ýý ÿ Çç Ññ
Ångström, Øresund, Łódź, Škoda, Čapek, Dvořák, Ţară, Đorđe.
"""

TEST_LINES = [
    "A lazy dog sleeps while the quick fox runs away.",
    "Hi there!!! What's up?",
    "They're going, aren't they? I'll check; you'll see.",
    "Contact: jane.doe@example.net, https://www.example.com/a/b?c=d#frag",
    "Total: $1,234.56 (tax incl.) — 15% off!",
    "Meet me at 10:15pm on 2025-12-31.",
    "Café au lait, s'il vous plaît. Très bien !",
    "Les élèves étudient à l'université de Montréal.",
    "Schöne Grüße aus München; die Brücke ist über dem Fluss.",
    "Mañana vamos a la playa con los niños. ¿Vienes?",
    "Ελληνικά γράμματα: άλφα, βήτα, γάμμα, δέλτα.",
    "Σήμερα είναι Δευτέρα και ο ΚΑΙΡΌΣ είναι καλός.",
    "Добрый вечер! Сегодня хорошая погода в Петербурге.",
    "ЁЛКА и ёжик живут в лесу.",
    "自然语言处理很有趣，我们今天学习分词。",
    "中文和English混合text测试123。",
    "私は日本語を勉強しています。",
    "東京タワーはとても高いです！",
    "대한민국의 수도는 서울입니다.",
    "감사합니다! 좋은 하루 되세요.",
    "Smile 😀 party 🎉 thumbs 👍 heart ❤️ rocket 🚀",
    "3.14 is pi and 2.718 is e; 1e10 is big, -42 is negative.",
    "",
    "   ",
    "\t\n  \r\n",
    "word",
    "supercalifragilisticexpialidocious",
    "a" * 120,
    "Ünïcödé àccèntś everywhere: ÅÉÎÕÜ ñ ç ø ß œ æ.",
    "Mixed   spacing\tand\nnew lines   here  ",
    "Trailing space ",
    " leading space",
    "CAPITALS AND lowercase And MiXeD",
    "Punctuation...!?;:,'\"()[]{}<>",
    "under_score and hyphen-ated and slash/separated",
    "Ω ohm sign and Å angstrom sign and ﬁ ligature",
    "Zero\u200bwidth and soft\u00adhyphen and bom\ufeffhere",
    "Control\x07bell and\x00nul chars",
    "Full-width ＡＢＣ１２３ and ideographic　space",
    "Math: x² + y² = z², ½ + ¼ = ¾",
    "Arabic مرحبا and Hebrew שלום words",
    "Thai สวัสดี and Hindi नमस्ते greetings",
    "Ligatures: Æsir, Œuvre, straße",
    "Quotes “curly” and ‘single’ and «guillemets»",
    "Dashes – en — em and ellipsis…",
    "İstanbul and ı dotless",
    "Hello world",
    "don't can't won't shouldn't",
    "'s 't 're 've 'm 'll 'd",
    "HTTP/1.1 200 OK\r\nContent-Type: text/html",
    "Tiếng Việt có nhiều dấu: Hà Nội, Thành phố Hồ Chí Minh, phở bò.",
    "Zażółć gęślą jaźń — Kraków, Wrocław, Gdańsk.",
    "Čeština: příliš žluťoučký kůň úpěl ďábelské ódy.",
    "Română: țară, știință, învățământ; Türkçe: çğışöü ÇĞİŞÖÜ.",
    "Íslenska: þú, ð, æ; Dansk: Ærø, Øst, Århus.",
    "Combining: e\u0301 a\u0308 n\u0303 and lone \u0301 mark",
    "Й and й, Ё and ё, ў and ї in Slavic words: йогурт, їжак.",
    "Ο Σωκράτης είπε: «Ἓν οἶδα ὅτι οὐδὲν οἶδα».",
    "ΆΈΉΊΌΎΏ άέήίόύώ ϊϋ ΐΰ",
    "I'M SHOUTING, WE'LL SEE, THEY'VE GONE, IT'S DONE.",
    "She said 'hello' and he said \"goodbye\".",
    "rock'n'roll and o'clock and ma'am",
    "1234567890 12,345,678.90 0.000001 1/2 3:4",
    "IPv4 192.168.0.1 and IPv6 ::1 and fe80::1%eth0",
    "https://ja.wikipedia.org/wiki/東京 and mailto:a@b.c",
    "#hashtag @mention $TICKER 100% &amp; <b>bold</b>",
    "C++ and C# and F# and .NET and Node.js",
    "snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
    "ZWJ family 👨‍👩‍👧‍👦 and flags 🇫🇷🇩🇪 and skin tone 👋🏽",
    "Box ┌─┐ and arrows ← → ↑ ↓ and math ∑ ∫ √ ∞ ≠ ≤",
    "Currency € £ ¥ ₹ ₽ ₩ ¢ and degree 25°C",
    "中华人民共和国成立于一九四九年。",
    "他说：“我们明天见！”然后就走了。",
    "繁體中文與简体中文並存。",
    "ひらがなだけのぶんしょうです",
    "カタカナダケノブンショウデス",
    "半角ｶﾀｶﾅと全角カタカナ",
    "漢字とかなの混じった文章、句読点。",
    "한글 자모: ㄱ ㄴ ㄷ ㄹ ㅏ ㅑ ㅓ ㅕ",
    "서울특별시 강남구 테헤란로 123번길",
    "Mixed 日本 and 한국 and 中国 in one line",
    "Tab\tseparated\tvalues\t1\t2\t3",
    "Line one\nLine two\nLine three",
    "Windows\r\nline\r\nendings",
    "Many     spaces     between     words",
    "Ellipsis... and more.... and ?!?! interrobang ‽",
    "Apostrophes ’ curly vs ' straight: don’t vs don't",
    "Non-breaking\u00a0space and thin\u2009space and narrow\u202fnbsp",
    "Private use \ue000 and replacement \ufffd char",
    "Numbers ①②③ and Roman Ⅻ and superscript ⁴ and fractions ⅓",
    "Ordinal 1st 2nd 3rd 4th and 1ª 2º",
    "ǅ ǈ ǋ titlecase digraphs and ﬀ ﬃ ligatures",
    "The end.",
]

PAIRS = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Wie geht's?", "Mir geht es gut, danke."),
    ("你好吗？", "我很好，谢谢。"),
    ("Short", "A much longer second sentence that keeps going and going for quite a while."),
    ("A much longer first sentence that keeps going and going for quite a while.", "Short"),
    ("", "Only the second has text."),
    ("Привет", "Ciao"),
    ("Emoji 😀", "Numbers 12345"),
    ("Both sentences are fairly long and will need truncation here.",
     "The second one is also fairly long and needs truncation too."),
    ("Ένα δύο τρία", "一二三"),
]


def train_corpus():
    lines = [l for l in TRAIN_BASE.splitlines() if l]
    out = []
    # Variations multiply the few base lines into a few hundred so merges have counts.
    for i in range(6):
        for l in lines:
            if i == 1:
                l = l.lower()
            elif i == 2:
                l = l.upper()
            elif i == 3:
                l = " ".join(reversed(l.split(" ")))
            elif i == 4:
                l = f"{i * 37 + len(l)}. {l}"
            elif i == 5:
                l = l.replace(" ", "  ")
            out.append(l)
    return out


def build_wordpiece(corpus):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=2000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.BertProcessing(
        ("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]")))
    return tok


def build_bpe(corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers, decoders
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + 4 + 1000, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")),
        trim_offsets=True, add_prefix_space=False)
    return tok


def cases():
    out = []
    for t in TEST_LINES:
        out.append((t, None, 128, False))
    for a, b in PAIRS:
        out.append((a, b, 128, False))
        out.append((a, b, 16, True))
    for t in TEST_LINES[:20]:
        out.append((t, None, 12, True))
    for a, b in PAIRS[:5]:
        out.append((a, b, 5, True))  # budget of 2 (BERT) or 1 (RoBERTa) tokens
    # max_length at or below the number of special tokens: HF truncates to nothing when
    # equal and does not truncate at all when below.
    for ml in (1, 2, 3, 4):
        out.append((TEST_LINES[0], None, ml, True))
        out.append(PAIRS[0] + (ml, True))
    return out


def expected(name, tok, pad_token):
    rows = []
    for a, b, max_len, pad in cases():
        tok.enable_truncation(max_length=max_len, strategy="longest_first")
        if pad:
            tok.enable_padding(length=max_len, pad_id=tok.token_to_id(pad_token),
                               pad_token=pad_token, pad_type_id=0)
        else:
            tok.no_padding()
        enc = tok.encode(a, b) if b is not None else tok.encode(a)
        rows.append({"tokenizer": name, "a": a, "b": b, "max_length": max_len, "pad": pad,
                     "ids": enc.ids, "type_ids": enc.type_ids,
                     "mask": enc.attention_mask})
    tok.no_padding()
    tok.no_truncation()
    return rows


def write_fixtures():
    os.makedirs(OUT, exist_ok=True)
    corpus = train_corpus()
    wp = build_wordpiece(corpus)
    bpe = build_bpe(corpus)
    wp.save(os.path.join(OUT, "wordpiece_tokenizer.json"), pretty=False)
    bpe.save(os.path.join(OUT, "bpe_tokenizer.json"), pretty=False)
    vocab = sorted(wp.get_vocab().items(), key=lambda kv: kv[1])
    with open(os.path.join(OUT, "vocab.txt"), "w", encoding="utf-8") as f:
        for tok, _ in vocab:
            f.write(tok + "\n")
    bj = json.load(open(os.path.join(OUT, "bpe_tokenizer.json"), encoding="utf-8"))
    with open(os.path.join(OUT, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(bj["model"]["vocab"], f, ensure_ascii=False)
    with open(os.path.join(OUT, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in bj["model"]["merges"]:
            f.write((m if isinstance(m, str) else " ".join(m)) + "\n")
    rows = expected("wordpiece", wp, "[PAD]") + expected("bpe", bpe, "<pad>")
    # The same vocabulary, cased: no lowercasing and no accent stripping.
    from tokenizers import normalizers
    wp.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)
    rows += expected("wordpiece_cased", wp, "[PAD]")
    with open(os.path.join(OUT, "expected.jsonl"), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
    import tokenizers
    with open(os.path.join(OUT, "GENERATED_BY.txt"), "w", encoding="utf-8") as f:
        f.write(f"scripts/make_tokenizer_fixtures.py with tokenizers {tokenizers.__version__}\n")
    print(f"wrote {len(rows)} expected rows to {OUT}")


# --- Unicode tables -----------------------------------------------------------------
# The tables copy what Hugging Face `tokenizers` itself does per code point, because its
# Rust crates carry their own (older) Unicode data: e.g. it strips only marks known to
# Unicode ~8-9, keeps unassigned code points, and knows fewer punctuation characters than
# Python's unicodedata. Each property is probed with a one-character input.

WHITESPACE = set([0x9, 0xA, 0xB, 0xC, 0xD, 0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029,
                  0x202F, 0x205F, 0x3000] + list(range(0x2000, 0x200B)))


def ranges(cps):
    out = []
    for cp in sorted(cps):
        if out and out[-1][1] == cp - 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return out


def emit_ranges(name, rs):
    body = ",".join(f"{{0x{a:X},0x{b:X}}}" for a, b in rs)
    return f"extern const CodeRange {name}[] = {{{body}}};\nextern const size_t {name}Size = {len(rs)};\n"


def emit_map(name, m):
    body = ",".join(
        "{0x%X,%d,{%s}}" % (cp, len(t), ",".join("0x%X" % x for x in (t + [0, 0, 0])[:3]))
        for cp, t in m)
    return f"extern const CodeMap {name}[] = {{{body}}};\nextern const size_t {name}Size = {len(m)};\n"


def write_tables():
    from tokenizers import normalizers, pre_tokenizers
    bert = lambda **kw: normalizers.BertNormalizer(
        **{"clean_text": False, "handle_chinese_chars": False, "strip_accents": False,
           "lowercase": False, **kw})
    clean, strip, lower = bert(clean_text=True), bert(strip_accents=True), bert(lowercase=True)
    bert_pre = pre_tokenizers.BertPreTokenizer()
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hangul = lambda cp: 0xAC00 <= cp <= 0xD7A3
    removed, marks, punct, letters, numbers = [], [], [], [], []
    strip_map, lower_map = [], []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        if clean.normalize_str(c) == "" and cp not in (0, 0xFFFD):
            removed.append(cp)
        st = strip.normalize_str(c)
        if st == "":
            marks.append(cp)
        elif st != c and not hangul(cp):
            strip_map.append((cp, [ord(x) for x in st]))
        lo = lower.normalize_str(c)
        if lo != c:
            lower_map.append((cp, [ord(x) for x in lo]))
        if cp not in WHITESPACE and len(bert_pre.pre_tokenize_str("a" + c + "a")) == 3:
            punct.append(cp)
        if len(byte_level.pre_tokenize_str("a" + c)) == 1:
            letters.append(cp)
        elif len(byte_level.pre_tokenize_str("1" + c)) == 1:
            numbers.append(cp)
        elif len(byte_level.pre_tokenize_str("!" + c)) != 1:
            assert cp in WHITESPACE, hex(cp)
    for cp in WHITESPACE:  # BERT splits words on exactly these
        assert len(bert_pre.pre_tokenize_str("a" + chr(cp) + "a")) == 2, hex(cp)
    for cp in (0xAC00, 0xAC01, 0xD7A3, 0xB137):
        s = cp - 0xAC00
        jamo = [0x1100 + s // 588, 0x1161 + (s % 588) // 28] + ([0x11A7 + s % 28] if s % 28 else [])
        assert [ord(x) for x in strip.normalize_str(chr(cp))] == jamo
    assert max(len(t) for _, t in lower_map + strip_map) <= 3
    import tokenizers
    text = (
        "// Generated by scripts/make_tokenizer_fixtures.py --tables by probing Hugging Face\n"
        f"// tokenizers {tokenizers.__version__} one code point at a time, so the tables carry its\n"
        "// Unicode data (see the script). Do not edit by hand.\n"
        "// clang-format off\n"
        '#include "client/train/tokenizer/unicode_tables.h"\n\n'
        "namespace coldfuse::train::unicode_internal {\n\n"
        + emit_ranges("kLetter", ranges(letters))
        + emit_ranges("kNumber", ranges(numbers))
        + emit_ranges("kBertPunctuation", ranges(punct))
        + emit_ranges("kNonspacingMark", ranges(marks))
        + emit_ranges("kBertControl", ranges(removed))
        + emit_map("kLowercase", lower_map)
        + emit_map("kStripAccents", strip_map)
        + "\n}  // namespace coldfuse::train::unicode_internal\n")
    path = os.path.join(ROOT, "client", "train", "tokenizer", "unicode_tables.cc")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {path} ({len(text)} bytes)")


if __name__ == "__main__":
    if "--tables" in sys.argv[1:]:
        write_tables()
    else:
        write_fixtures()
