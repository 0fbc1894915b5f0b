#!/usr/bin/env python3
"""Writes the hand-made seed inputs of fuzz/corpus/<target>/ (files named seed-*), from
the repository's fixtures and small examples. Deterministic: rerunning it rewrites the
same bytes. Inputs the fuzzers found that are worth keeping (crashes turned regression
tests) live beside them under other names and are not touched.

    python3 fuzz/corpus/make_seeds.py
"""
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
CHUNK = 1 << 20


def write(target, name, data):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(folder, "seed-" + name), "wb") as f:
        f.write(data)


def fixture(*parts):
    with open(os.path.join(FIXTURES, *parts), "rb") as f:
        return f.read()


# --- safetensors --------------------------------------------------------------------------
ITEM = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4, "I64": 8,
        "U64": 8, "F16": 2, "BF16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def safetensors(tensors, metadata=None, align=True):
    """tensors: [(name, dtype, shape)]; data bytes are a counter pattern."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        n = ITEM[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + n]}
        data += bytes((len(data) + i) * 7 % 251 for i in range(n))
    text = json.dumps(header, separators=(",", ":")).encode()
    if align:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    t = "safetensors"
    write(t, "two-f32", safetensors([("a", "F32", [2, 3]), ("b", "F32", [4])], {"format": "pt"}))
    write(t, "float-dtypes", safetensors(
        [("h", "F16", [3]), ("bf", "BF16", [2, 2]), ("d", "F64", [1]), ("s", "F32", [])]))
    write(t, "all-dtypes", safetensors([(d.lower(), d, [2]) for d in ITEM]))
    write(t, "zero-size", safetensors(
        [("e1", "F32", [0]), ("x", "F16", [2]), ("e2", "F64", [3, 0]), ("y", "BF16", [1])]))
    write(t, "empty-header", safetensors([], align=False))
    write(t, "metadata-only", safetensors([], {"k": "v", "\u00e9": "\U0001F600"}))
    raw = b'{"__metadata__":null,"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    write(t, "null-metadata", struct.pack("<Q", len(raw)) + raw + b"\x2a")
    write(t, "unaligned", safetensors([("w", "F32", [1])], align=False))
    # The tiny BERT fixture's header with every dimension cut to at most 2.
    d = fixture("encoders", "bert", "model.safetensors")
    n = struct.unpack("<Q", d[:8])[0]
    header = json.loads(d[8:8 + n])
    tensors = [(k, v["dtype"], [min(x, 2) for x in v["shape"]])
               for k, v in sorted(header.items(), key=lambda kv: kv[1].get("data_offsets", [0])[0]
                                  if kv[0] != "__metadata__" else -1)
               if k != "__metadata__"]
    write(t, "bert-shrunk", safetensors(tensors, header.get("__metadata__")))
    # Rejected on purpose: each is one step from a valid file.
    raw = (b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
           b'"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}')
    write(t, "bad-overlap", struct.pack("<Q", len(raw)) + raw + b"abc")
    write(t, "bad-length", struct.pack("<Q", 1 << 40) + b"{}")


# --- json ---------------------------------------------------------------------------------
def json_seeds():
    t = "json"
    write(t, "all-kinds", '{"z": null, "a": [true, false, -1.5e3, 0, "s"], "m": {}}')
    write(t, "escapes", r'"a\"\\\/\b\f\n\r\t\u0041\u00e9\u20AC\ud83d\ude00\u0000"')
    write(t, "numbers", "[0, -0, 1, -1, 18446744073709551615, 18446744073709551616, "
          "-9223372036854775808, 9223372036854775808, 1e400, 1.0, 1E+2, 0.5e-3]")
    write(t, "utf8", '{"\u00e9\u4e2d\U0001F600": "\U0010FFFF", "k": ["\u00ff"]}')
    write(t, "nested-64", "[" * 64 + "]" * 64)
    write(t, "nested-65", "[" * 65 + "]" * 65)
    write(t, "whitespace", ' \t\n\r{ "a" : [ 1 , 2 ] }\n')
    write(t, "index", json.dumps({"metadata": {"total_size": 96},
                                  "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                 "b": "model-00002-of-00002.safetensors"}},
                                 indent=2))
    write(t, "bert-config", fixture("encoders", "bert", "config.json"))
    write(t, "roberta-config", fixture("encoders", "roberta", "config.json"))
    d = fixture("encoders", "bert", "model.safetensors")
    write(t, "safetensors-header", d[8:8 + struct.unpack("<Q", d[:8])[0]])
    write(t, "bad-duplicate", '{"a": 1, "a": 2}')
    write(t, "bad-surrogate", '"\\ud83d"')
    write(t, "scalar", "true")


# --- csv ----------------------------------------------------------------------------------
# First byte: delimiter (bits 0-1: , \t ; |), 4: no quoting, 8: blank lines kept.
def csv_seeds():
    t = "csv"
    write(t, "quoted", b"\x00" + b'text,label\n"a, b",1\n"say ""hi""",0\n"two\nlines",1\n')
    write(t, "crlf-bom", b"\x00" + b'\xef\xbb\xbfname , value\r\nx,1\r\n"y",2\r\n')
    write(t, "blank-lines", b"\x00" + b"a,b\n\n1,2\n   \n3,4\n\n")
    write(t, "tsv", b"\x05" + b"text\tlabel\nno \"quotes\" here\t1\nb\t0\n")
    write(t, "semicolon", b"\x02" + b'x;y\n"1;2";3\n')
    write(t, "pipe-unquoted", b"\x07" + b'x|y\na"b|c\n')
    write(t, "dataset", b"\x08" + b"f1,f2,label\n1.5,-2,0\n3,4e2,1\n\"5\",6.0,2\n")
    write(t, "dataset-float-label", b"\x08" + b"f,label\n0.5,1.0\n1,0\n\n")
    write(t, "bad-stray-quote", b"\x00" + b'a,b\nx"y,1\n')
    write(t, "bad-unclosed", b"\x00" + b'a,b\n"x,1\n')
    write(t, "bad-field-count", b"\x08" + b"f,label\n1,2,3\n")


# --- text datasets ------------------------------------------------------------------------
# First byte: format (0 csv, 1 tsv, 2-3 jsonl), 4: format given (not by extension),
# 8: regression, 16: pair column "pair", 32: fixed labels, 64: label column "text".
def text_dataset_seeds():
    t = "text_dataset"
    write(t, "csv", b"\x00" + b'text,label\ngreat movie,pos\n"bad, really",neg\nok,pos\n')
    write(t, "csv-int-labels", b"\x00" + b"label,text\n+1,a\n02,b\n10,c\n")
    write(t, "tsv", b"\x01" + b"text\tlabel\nhello there\t1\nbye\t0\n")
    write(t, "jsonl", b"\x02" + b'{"text": "a", "label": "pos"}\n\n{"text": "b", "label": 1}\r\n')
    write(t, "jsonl-given", b"\x06" + b'\xef\xbb\xbf{"text": "\\u00e9", "label": "neg"}\n')
    write(t, "regression", b"\x08" + b"text,label\nx,3.5\ny,-1e3\n")
    write(t, "jsonl-regression", b"\x0a" + b'{"text": "x", "label": 0.25}\n')
    write(t, "pairs", b"\x10" + b"text,pair,label\npremise,hypothesis,1\np2,h2,0\n")
    write(t, "jsonl-pairs", b"\x12" + b'{"text": "p", "pair": "h", "label": "0"}\n')
    write(t, "fixed-labels", b"\x20" + b"text,label\nx,pos\ny,2\n")
    write(t, "text-is-label", b"\x40" + b"text\nalpha\nbeta\n")
    write(t, "bad-jsonl", b"\x02" + b'{"text": "a", "label": [1]}\n')


# --- tokenizers ---------------------------------------------------------------------------
SEP = b"\x1f"


def tokenizer_load_seeds():
    t = "tokenizer_load"
    opts = bytes([13])  # max_length 128, no padding, no truncation
    write(t, "vocab-txt", b"\x0c" + opts + fixture("tokenizers", "vocab.txt") + SEP +
          b"Hello, world! Unaffable caf\xc3\xa9.")
    write(t, "vocab-txt-small", b"\x00" + bytes([0x38]) +
          b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n##s\nworld\n,\n" + SEP + b"hellos, world")
    write(t, "vocab-json-merges", b"\x01" + bytes([0x2c]) + fixture("tokenizers", "vocab.json") +
          SEP + fixture("tokenizers", "merges.txt") + SEP + b"Hello world" + SEP + b"pair")
    small_vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "h": 4, "e": 5, "l": 6, "o": 7,
                   "\u0120": 8, "he": 9, "ll": 10, "hell": 11, "\u0120h": 12}
    write(t, "bpe-small", b"\x01" + bytes([0x18]) + json.dumps(small_vocab).encode() + SEP +
          "#version: 0.2\nh e\nl l\nhe ll\n\u0120 h\n".encode() + SEP + b"hello hello")
    write(t, "wordpiece-json", b"\x02" + opts + fixture("tokenizers", "wordpiece_tokenizer.json") +
          SEP + b"Don't stop \xe4\xb8\xad\xe6\x96\x87")
    write(t, "bpe-json", b"\x02" + opts + fixture("tokenizers", "bpe_tokenizer.json") + SEP +
          b"It's  a test\n")
    write(t, "wordpiece-json-small", b"\x02" + bytes([0x6b]) + json.dumps({
        "normalizer": {"type": "BertNormalizer", "lowercase": False, "strip_accents": None},
        "post_processor": {"type": "BertProcessing", "cls": ["[CLS]", 2], "sep": ["[SEP]", 3]},
        "padding": {"pad_token": "[PAD]"},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 5,
                  "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "##b": 5}}
    }).encode() + SEP + b"ab abbbbbbbb" + SEP + b"a")
    write(t, "bpe-json-small", b"\x02" + bytes([0x0d]) + json.dumps({
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True},
        "post_processor": {"type": "RobertaProcessing", "cls": ["<s>", 0], "sep": ["</s>", 2]},
        "model": {"type": "BPE", "vocab": small_vocab,
                  "merges": ["h e", ["l", "l"], "he ll", ["\u0120", "h"]]}
    }).encode() + SEP + b"hello")


def tokenizer_encode_seeds():
    t = "tokenizer_encode"
    rows = [json.loads(line) for line in
            fixture("tokenizers", "expected.jsonl").decode("utf-8").splitlines()]
    seen = []
    for row in rows:
        key = (row["a"], row["b"])
        if key not in seen:
            seen.append(key)
    # Tokenizer byte: bit 0 BPE; WordPiece options in bits 1-5, BPE add_prefix_space in bit 1.
    # Options byte: max_length index (bits 0-3), pad 16, truncation 32, pair 64.
    choices = [0x00, 0x1e, 0x01, 0x03, 0x10, 0x2a, 0x11, 0x3e]
    opts = [0x0d, 0x38, 0x2b, 0x14, 0x29, 0x0c, 0x37, 0x25]
    for i, (a, b) in enumerate(seen[:40]):
        pair = b is not None
        o = opts[i % len(opts)] | (0x40 if pair else 0)
        text = a.encode("utf-8") + ((SEP + b.encode("utf-8")) if pair else b"")
        write(t, "text-%02d" % i, bytes([choices[i % len(choices)], o]) + text)
    write(t, "invalid-utf8", b"\x01\x2d" + b"ok \xff\xfe \xc3 \xed\xa0\x80 \xf4\x90\x80\x80 end")
    write(t, "ascii-long-word", b"\x20\x0d" + b"abcdefghij KLMNOP, q.r")
    write(t, "controls", b"\x02\x3d" + b"a\x00b\tc\x0bd\x7fe\xc2\x85f\xe2\x80\x8bg")


# --- upload -------------------------------------------------------------------------------
class Program:
    """Encodes an upload_fuzz input the way FuzzInput reads it."""

    def __init__(self):
        self.out = bytearray()

    def byte(self, b):
        self.out.append(b & 0xFF)
        return self

    def int_in_range(self, lo, hi, v):
        rng = hi - lo
        nbytes = 0
        r = rng
        while r:
            nbytes += 1
            r >>= 8
        v -= lo
        self.out += v.to_bytes(nbytes, "big") if nbytes else b""
        return self


ITEMSIZE = {0: 4, 1: 2, 2: 2, 3: 8}  # F32, F16, BF16, F64


def upload_program(tensors, faults=0, sink_fail_at=None, resume=None, ops=()):
    """tensors: [(dtype_index, shape, long)]; ops: [(op_byte, extra bytes)]."""
    p = Program()
    p.int_in_range(1, 4, len(tensors))
    for dtype, shape, long_dim in tensors:
        p.byte(dtype | (4 if long_dim else 0))
        if long_dim:
            p.int_in_range(0, 3 * CHUNK // ITEMSIZE[dtype], shape[0])
        else:
            p.int_in_range(0, 3, len(shape))
            for d in shape:
                p.int_in_range(0, 40, d)
    p.byte(faults)
    if faults & 1:
        p.int_in_range(0, 15, sink_fail_at)
    if resume is None:
        p.byte(0)
    else:
        p.byte(1)
        p.out += resume
    for op, extra in ops:
        p.byte(op)
        p.out += extra
    return bytes(p.out)


def upload_seeds():
    t = "upload"
    TO_END, TO_BOUNDARY, SMALL, MAX, PAST = b"\x02", b"\x01", b"\x00", b"\x03", b"\x04"
    NEXT, TRAILER, BAD_TRAILER, ABANDON = 0, 5, 6, 7
    write(t, "one-small", upload_program([(0, [3, 4], False)], ops=[(NEXT, TO_END), (TRAILER, b"")]))
    write(t, "small-pieces", upload_program(
        [(1, [5], False), (3, [2, 2], False)],
        ops=[(NEXT, SMALL + b"\x00\x03"), (NEXT, TO_END), (NEXT, SMALL + b"\x00\x07"), (NEXT, TO_END),
             (TRAILER, b"")]))
    write(t, "empty-tensors", upload_program(
        [(0, [0], False), (2, [3], False), (0, [2, 0], False)],
        ops=[(NEXT, TO_END), (TRAILER, b"")]))
    big = [(0, [300000], True), (1, [5], False)]  # 1.2 MB: two storage chunks
    write(t, "two-storage-chunks", upload_program(
        big, ops=[(NEXT, TO_BOUNDARY), (NEXT, TO_END), (NEXT, TO_END), (TRAILER, b"")]))
    write(t, "max-chunks", upload_program(
        big, ops=[(NEXT, MAX), (NEXT, TO_END), (NEXT, TO_END), (BAD_TRAILER, b"\x01"),
                  (TRAILER, b"")]))
    # Resume at tensor 0, offset one storage chunk (case 0, value 1), no read fault.
    write(t, "resume", upload_program(
        big, resume=bytes([0, 0, 1, 0, 0]), ops=[(NEXT, TO_END), (NEXT, TO_END), (TRAILER, b"")]))
    write(t, "resume-read-fails", upload_program(
        big, resume=bytes([1, 1, 2, 0]), ops=[(NEXT, TO_END), (TRAILER, b"")]))
    write(t, "out-of-order", upload_program(
        [(0, [10], False)], ops=[(4, b"\x01\x02" + SMALL + b"\x00\x04"), (NEXT, PAST),
                                 (NEXT, TO_END), (TRAILER, b"")]))
    write(t, "corrupt-then-trailer", upload_program(
        [(3, [4], False)], ops=[(0x80, TO_END + b"\x05"), (TRAILER, b"")]))
    write(t, "early-trailer-abandon", upload_program(
        [(0, [8], False)], ops=[(NEXT, SMALL + b"\x00\x04"), (TRAILER, b""), (ABANDON, b"\x01")]))
    write(t, "sink-fails", upload_program(
        big, faults=1, sink_fail_at=1, ops=[(NEXT, TO_END), (NEXT, TO_END), (TRAILER, b"")]))
    write(t, "commit-fails", upload_program(
        [(2, [6], False)], faults=2, ops=[(NEXT, TO_END), (TRAILER, b""), (TRAILER, b""),
                                          (ABANDON, b"\x00")]))


if __name__ == "__main__":
    safetensors_seeds()
    json_seeds()
    csv_seeds()
    text_dataset_seeds()
    tokenizer_load_seeds()
    tokenizer_encode_seeds()
    upload_seeds()
