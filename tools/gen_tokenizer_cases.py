#!/usr/bin/env python3.11
"""Generate the tokenizer parity fixtures from cn_clip's own pure-Python tokenizer.

Writes (paths relative to the repository root):

- crates/cnclip-model/tests/fixtures/tokenizer/corpus.jsonl
    one JSON object per line, {"text": ..., "ids": [...]}, where ids are cn_clip's *unpadded* piece ids,
    ``FullTokenizer.convert_tokens_to_ids(FullTokenizer.tokenize(text))`` (no [CLS]/[SEP]);
- crates/cnclip-model/tests/fixtures/tokenizer/codepoints.txt
    an exhaustive check of every code point: for each block of 256 code points, an FNV-1a 64 hash of
    ``BasicTokenizer.tokenize`` over four probe strings per code point (see ``PROBES``);
- crates/cnclip-model/src/tokenizer/unicode14.rs
    the ranges of code points assigned in Python 3.11's Unicode database (14.0.0), which the Rust
    tokenizer uses to see newer characters the way Python 3.11 does (as unassigned).

cn_clip's ``bert_tokenizer.py`` is loaded directly with importlib, so torch is not needed. The expected
ids depend on the Unicode version of Python's ``unicodedata`` (str.lower, NFD and categories all come from
it), so this script refuses to run unless that version is 14.0.0 (Python 3.11).

    python3.11 tools/gen_tokenizer_cases.py                 # write all three files
    python3.11 tools/gen_tokenizer_cases.py --check-tokenize  # also compare with cn_clip.clip.tokenize (needs torch)
    python3.11 tools/gen_tokenizer_cases.py --explain 0x1171E # print what Python does with one code point
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import unicodedata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "crates", "cnclip-model", "tests", "fixtures", "tokenizer")
TABLE_RS = os.path.join(ROOT, "crates", "cnclip-model", "src", "tokenizer", "unicode14.rs")
SEED = 20_240_601

# Probe strings for the exhaustive per-code-point check; {} is the code point. They expose what the
# basic tokenizer does with it: dropped / whitespace / split off / lowercased / decomposed / stripped
# ("x{}x"), whether it is case-ignorable or cased for the final-sigma rule ("A{}Σ", "{}Σ"), and its
# canonical combining class, through reordering between two spacing marks that have one (U+1D16D has
# class 226, U+1D165 class 216; neither is Mn, so both survive accent stripping).
PROBES = ("x{}x", "A{}\u03a3", "{}\u03a3", "\U0001d16d{}\U0001d165")
BLOCK = 256

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1


def load_bert_tokenizer(cn_clip_dir: str | None):
    """Import cn_clip/clip/bert_tokenizer.py as a standalone module (cn_clip/__init__ imports torch)."""
    if cn_clip_dir is None:
        spec = importlib.util.find_spec("cn_clip")  # finds the package without executing it
        if spec is None or spec.origin is None:
            sys.exit("cn_clip is not installed: pip install cn-clip==1.6.0, or pass --cn-clip-dir")
        cn_clip_dir = os.path.dirname(spec.origin)
    path = os.path.join(cn_clip_dir, "clip", "bert_tokenizer.py")
    spec = importlib.util.spec_from_file_location("cn_clip_bert_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    vocab = os.path.join(cn_clip_dir, "clip", "vocab.txt")
    return module, module.FullTokenizer(vocab_file=vocab)


# --------------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------------

ZH_SUBJECTS = """一只小猫 两只狗 一个女孩 一位老人 一群孩子 一辆红色汽车 一架飞机 一只熊猫 一匹白马 一个男人 一位厨师
一名运动员 一只鸟 一条金鱼 一位母亲 一个婴儿 一头大象 一只兔子 一群游客 一位警察 一名学生 一只蝴蝶 一辆自行车
一艘小船 一座古老的寺庙 一只企鹅 两个朋友 一对情侣 一位医生 一只老虎 一名消防员 一位画家 一只松鼠 一个机器人""".split()
ZH_VERBS = """坐在 躺在 站在 走在 跑过 飞过 停在 趴在 睡在 玩耍于 漂浮在 出现在 穿过 等在 骑在 看着 拿着 抱着 吃着 靠在""".split()
ZH_PLACES = """草地上 沙滩上 公园里 桌子上 雪地里 街道上 海边 山顶上 厨房里 教室里 河边 森林中 沙发上 窗台上 花园里
城市的夜景中 天安门广场 长城上 西湖边 地铁站 咖啡馆里 图书馆 超市门口 高速公路上 屋顶上 湖面上 田野里 体育场""".split()
ZH_ADJS = """可爱的 美丽的 安静的 热闹的 古老的 现代的 明亮的 黑暗的 温暖的 寒冷的 巨大的 小小的 五颜六色的 干净的
破旧的 壮观的 神秘的 舒适的 繁忙的 宁静的""".split()
ZH_NOUNS = """风景 照片 画面 建筑 食物 蛋糕 火锅 饺子 面条 米饭 水果 苹果 西瓜 葡萄 咖啡 茶 啤酒 手机 电脑 相机 耳机
书包 衣服 连衣裙 运动鞋 帽子 眼镜 雨伞 花朵 樱花 荷花 月亮 太阳 星空 彩虹 瀑布 雪山 沙漠 草原 海浪 城市 村庄""".split()
ZH_QUERIES = """好看的风景 可爱的猫 日落 海边的日出 下雪的北京 美食 红烧肉 生日蛋糕 婚礼照片 全家福 毕业照 宝宝 狗狗
猫咪 夜景 烟花 春节 中秋节 月饼 旅游 自拍 合影 证件照 截图 二维码 发票 身份证 菜单 文件 白板 手写笔记 黑白照片""".split()
ZH_PUNCT = list("，。！？、；：“”‘’（）《》【】…—·～「」『』〈〉")
EN_WORDS = """the a cat dog running on beach sunset mountain city street night photo of with and in at red blue green
big small happy people car train plane bird tree flower water sky cloud snow rain coffee cup table chair window
phone laptop camera book music video game football basketball iPhone Android Windows Linux GitHub YouTube WeChat
Taobao Alipay Huawei Xiaomi Tesla BMW NASA AI GPU CPU USB HDMI WiFi 5G 4K HDR OpenAI CLIP BERT PyTorch
unaffable tokenization transformers embedding retrieval zero-shot multimodal contrastive pretraining""".split()
ACCENTED = """café naïve résumé Ångström ÉCOLE École façade Zürich Müller Straße Mädchen Ærø Øresund São Paulo
Kraków Łódź Dvořák Škoda Čapek Ñandú piñata jalapeño Curaçao Besançon Noël Gödel Erdős Île-de-France
crème brûlée déjà vu coöperate Citroën Hyundai Björk Sigur Rós Þingvellir Reykjavík Ørsted Ševčík
ÀÁÂÃÄÅ àáâãäå ÈÉÊË ÌÍÎÏ ÒÓÔÕÖ ÙÚÛÜ Ýÿ ǅ ǈ ǋ ǲ Ǆ ǆ ÿ Ÿ İstanbul ıspanak DİYARBAKIR ŞİŞLİ ğüşiöç
Ǳ ǰ ẞ ß STRASSE ﬁ ﬂ ﬀ ﬃ ﬄ ﬅ ﬆ ﬓ ﬔ ŉ ǰ ΐ ΰ և ẖ ẗ ẘ ẙ ẚ ᾈ ᾼ ῌ ῼ Ω K Å ℃ ℉ № ™ ½ ① Ⅻ ⅻ""".split()
GREEK = """ΟΔΥΣΣΕΥΣ Σ ΑΣ ΒΣ ΣΟΦΙΑ ΣΙΣΥΦΟΣ ΘΕΟΣ ΚΟΣΜΟΣ ΛΟΓΟΣ ΧΑΟΣ ΕΡΩΣ ΠΑΘΟΣ ΗΘΟΣ ΑΘΗΝΑΣ ΣΑΣ ΜΑΣ
Οδυσσεύς Σωκράτης Ἀριστοτέλης λόγος κόσμος σοφία Ελλάδα ΕΛΛΑΣ Ἑλλάς ὈΔΥΣΣΕΎΣ ΆΣ ΈΣ ΉΣ ΊΣ ΌΣ ΎΣ ΏΣ""".split()
EMOJI = ["😀", "😂", "🤣", "❤️", "👍", "👍🏻", "👍🏽", "👍🏿", "👨‍👩‍👧‍👦", "👩‍💻", "🧑🏽‍🚀", "🏳️‍🌈", "🏴‍☠️",
         "🇨🇳", "🇺🇸", "🇯🇵", "#️⃣", "1️⃣", "*️⃣", "©️", "®️", "™️", "☺", "☺️", "✌🏼", "🫠", "🫶🏾", "🥹", "🐱", "🐶",
         "🌸", "🍜", "🎉", "🔥", "✨", "💯", "🙏", "👀", "🤖", "🦄", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "🧔‍♂️", "👩🏻‍❤️‍💋‍👨🏼", "😎", "🈶", "🉐", "🀄",
         "🆗", "🅰️", "Ⓜ️", "🔟", "⌚", "⏰", "☔", "♻️", "⚠️", "⬆️", "〽️", "㊗️", "㊙️", "🫡", "🩷", "🪿", "🫎"]
CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x0e", "\x1b", "\x1c", "\x1d", "\x1e", "\x1f", "\x7f",
           "\x80", "\x85", "\x9f", "\xad", "\u0600", "\u061c", "\u06dd", "\u070f", "\u180e", "\u200b", "\u200c",
           "\u200d", "\u200e", "\u200f", "\u202a", "\u202e", "\u2060", "\u2061", "\u2064", "\u2066", "\u2069",
           "\u206f", "\ufeff", "\ufff9", "\ufffb", "\ufffd", "\ufffe", "\uffff", "\U000110bd", "\U0001bca0",
           "\U0001d173", "\U000e0001", "\U000e0020", "\U000e007f", "\U000e0100"]
PRIVATE = ["\ue000", "\ue001", "\uf8ff", "\U000f0000", "\U000ffffd", "\U00100000", "\U0010fffd", "\U000fffff",
           "\U0010ffff", "\ufdd0", "\ufdef", "\U0001fffe", "\U0002ffff"]
SPACES = [" ", "\t", "\n", "\r", "\r\n", "\xa0", "\u1680", "\u2000", "\u2001", "\u2002", "\u2003", "\u2007",
          "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\x0b", "\x0c", "\x1c", "\x85", "  ", "\t\t"]
COMBINING = ["\u0300", "\u0301", "\u0302", "\u0303", "\u0308", "\u030a", "\u0323", "\u0327", "\u0328", "\u0345",
             "\u0360", "\u0361", "\u0488", "\u0489", "\u05b0", "\u0610", "\u064b", "\u0670", "\u0903", "\u093c",
             "\u0941", "\u094d", "\u0e31", "\u0e48", "\u1ab0", "\u1dc0", "\u20d0", "\u20dd", "\u20e3", "\u302a",
             "\u302e", "\u3099", "\u309a", "\ufe0f", "\ufe20", "\U0001d165", "\U0001d167", "\U0001d16d",
             "\U0001e8d0", "\U000e0100", "\U0001171e"]
CJK_EDGES = [0x2E80, 0x2F00, 0x3005, 0x3006, 0x3007, 0x3021, 0x3038, 0x33FF, 0x3400, 0x4DBF, 0x4DC0, 0x4DFF,
             0x4E00, 0x4E01, 0x9FA5, 0x9FFC, 0x9FFD, 0x9FFF, 0xA000, 0xF8FF, 0xF900, 0xF901, 0xFA0E, 0xFA6D,
             0xFA6E, 0xFAD9, 0xFADA, 0xFAFF, 0xFB00, 0xFE30, 0xFF01, 0x1F200, 0x20000, 0x20001, 0x2A6DD, 0x2A6DF,
             0x2A6E0, 0x2A700, 0x2B734, 0x2B739, 0x2B73F, 0x2B740, 0x2B81D, 0x2B81F, 0x2B820, 0x2CEA1, 0x2CEAF,
             0x2CEB0, 0x2EBE0, 0x2EBF0, 0x2F7FF, 0x2F800, 0x2F801, 0x2FA1D, 0x2FA1F, 0x2FA20, 0x30000, 0x3134A,
             0x31350, 0x323AF]
# Code points assigned after Unicode 14.0, which Python 3.11 treats as unassigned but newer Unicode tables
# (Rust's std and crates) know: new upper-case letters with lower-case mappings (U+1C89,
# U+A7CB, U+A7DC, Garay), new Cf (U+13439..), new punctuation (U+11B00..), new marks (U+0897, U+1E4EC..),
# new CJK outside BERT's ranges (U+2EBF0.., U+31350..). Derived with the Rust crates this port uses.
POST_UNICODE_14 = [
    (0x5C8, 0x5C9), (0x897, 0x897), (0xCF3, 0xCF3), (0xECE, 0xECE), (0x1ACF, 0x1AF0), (0x1B4E, 0x1B4F),
    (0x1B7F, 0x1B7F), (0x1C89, 0x1C8A), (0x2427, 0x2429), (0x2FFC, 0x2FFF), (0x31E4, 0x31E5), (0x31EF, 0x31EF),
    (0xA7CB, 0xA7CF), (0xA7D2, 0xA7D2), (0xA7D4, 0xA7D4), (0xA7DA, 0xA7DC), (0xA7F1, 0xA7F1), (0x105C0, 0x105F3),
    (0x10D40, 0x10D65), (0x10D69, 0x10D85), (0x10D8E, 0x10D8F), (0x10EC2, 0x10EC4), (0x10ECB, 0x10ECF),
    (0x10EF0, 0x10EFF), (0x1123F, 0x11241), (0x11380, 0x11389), (0x1138B, 0x1138B), (0x1138E, 0x1138E),
    (0x11390, 0x113B5), (0x113B7, 0x113C0), (0x113C2, 0x113C2), (0x113C5, 0x113C5), (0x113C7, 0x113CA),
    (0x113CC, 0x113D5), (0x113D7, 0x113D8), (0x113E1, 0x113E2), (0x116D0, 0x116E3), (0x11B00, 0x11B09),
    (0x11BC0, 0x11BE1), (0x11BF0, 0x11BF9), (0x11F00, 0x11F10), (0x11F12, 0x11F3A), (0x11F3E, 0x11F5A),
    (0x1342F, 0x1342F), (0x13439, 0x13455), (0x13460, 0x143FA), (0x16100, 0x16139), (0x16D40, 0x16D79),
    (0x16EA0, 0x16EB8), (0x16EBB, 0x16ED3), (0x18CFF, 0x18CFF), (0x1B132, 0x1B132), (0x1B155, 0x1B155),
    (0x1CC00, 0x1CCF9), (0x1CD00, 0x1CEB3), (0x1D127, 0x1D128), (0x1D250, 0x1D252), (0x1D25B, 0x1D25C),
    (0x1D25F, 0x1D25F), (0x1D280, 0x1D281), (0x1D2C0, 0x1D2D3), (0x1DF25, 0x1DF2A), (0x1E030, 0x1E06D),
    (0x1E08F, 0x1E08F), (0x1E4D0, 0x1E4F9), (0x1E5D0, 0x1E5FA), (0x1E5FF, 0x1E5FF), (0x1E6E3, 0x1E6E3),
    (0x1E6E6, 0x1E6E6), (0x1E6EE, 0x1E6EF), (0x1E6F5, 0x1E6F5), (0x1F6DC, 0x1F6DC), (0x1F774, 0x1F776),
    (0x1F77B, 0x1F77F), (0x1F7D9, 0x1F7D9), (0x1F8B2, 0x1F8BB), (0x1F8C0, 0x1F8C1), (0x1FA75, 0x1FA77),
    (0x1FA87, 0x1FA89), (0x1FA8F, 0x1FA8F), (0x1FAAD, 0x1FAAF), (0x1FABB, 0x1FABF), (0x1FAC6, 0x1FAC6),
    (0x1FACE, 0x1FACF), (0x1FADA, 0x1FADC), (0x1FADF, 0x1FADF), (0x1FAE8, 0x1FAE9), (0x1FAF7, 0x1FAF8),
    (0x1FBCB, 0x1FBEF), (0x2B739, 0x2B739), (0x2EBF0, 0x2EE5D), (0x31350, 0x323AF),
]
# Characters whose properties changed after Unicode 14.0: U+0295 stopped being Lowercase (so not Cased for
# the final-sigma rule), U+1171E went from Mn to Mc (so accent stripping would keep it).
CHANGED_SINCE_14 = ["\u0295", "\U0001171e"]
HANGUL = "한국어 안녕하세요 서울 사진 고양이 강아지 바다 ᄀᄁᄂ ᅡᅢ ᆨᆩ 각 갃 힣 ㄱ ㅏ".split()
KANA = "ひらがな カタカナ 東京タワー ｶﾀｶﾅ ﾊﾟﾝ ガ が ゔ ヴ ㋐ ㌀ ー 〜 ・ ゟ ヿ こんにちは ありがとう".split()
URLS = ["https://github.com/OFA-Sys/Chinese-CLIP", "http://例子.测试/路径?q=猫&lang=zh", "user@example.com",
        "C:\\Users\\张三\\Pictures\\IMG_0001.JPG", "/home/user/照片/2023-10-01 12.30.45.jpg", "a+b=c", "x^2+y^2",
        "f(x)=sin(x)/x", "#hashtag", "@某人", "$100", "¥200", "€3,50", "£4.99", "50%", "3.14159", "1,000,000",
        "2023年10月1日", "12:30:45", "v1.2.3-beta+build.5", "<html><body>", "{\"key\": [1, 2]}", "`code`",
        "~/.cache", "a_b_c", "a-b-c", "a|b", "'quoted'", "\"double\"", "(paren)", "[bracket]", "...", "!!!", "???"]
FULLWIDTH_ASCII = "".join(chr(c) for c in range(0xFF01, 0xFF5F))


def rand_cp_any(rng: random.Random) -> str:
    """A random code point from any plane (surrogates excluded), weighted towards the interesting planes."""
    plane = rng.choice([0, 0, 0, 0, 1, 1, 2, 3, 14, 15, 16, rng.randrange(17)])
    while True:
        cp = plane * 0x10000 + rng.randrange(0x10000)
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


ALL_ASSIGNED: dict[str, list[str]] = {}


def rand_cp_category(rng: random.Random) -> str:
    """A random assigned character, the category chosen first so that rare categories show up."""
    if not ALL_ASSIGNED:
        for cp in range(0x110000):
            if 0xD800 <= cp <= 0xDFFF:
                continue
            cat = unicodedata.category(chr(cp))
            if cat not in ("Cn", "Cs"):
                ALL_ASSIGNED.setdefault(cat, []).append(chr(cp))
    cat = rng.choice(sorted(ALL_ASSIGNED))
    return rng.choice(ALL_ASSIGNED[cat])


def rand_post14(rng: random.Random) -> str:
    lo, hi = rng.choice(POST_UNICODE_14)
    return chr(rng.randint(lo, hi))


def zh_caption(rng: random.Random) -> str:
    parts = [rng.choice(ZH_ADJS) if rng.random() < 0.4 else "", rng.choice(ZH_SUBJECTS), rng.choice(ZH_VERBS),
             rng.choice(ZH_PLACES)]
    if rng.random() < 0.5:
        parts += [rng.choice(ZH_PUNCT[:2]), rng.choice(ZH_ADJS), rng.choice(ZH_NOUNS)]
    if rng.random() < 0.2:
        parts.append(rng.choice(ZH_PUNCT))
    return "".join(parts)


def zh_query(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.5:
        return rng.choice(ZH_QUERIES)
    if r < 0.8:
        return rng.choice(ZH_ADJS) + rng.choice(ZH_NOUNS)
    return rng.choice(ZH_QUERIES) + rng.choice([" ", "", "的", "和"]) + rng.choice(ZH_NOUNS)


def mixed(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 8)):
        r = rng.random()
        if r < 0.35:
            out.append(rng.choice(ZH_NOUNS + ZH_QUERIES))
        elif r < 0.65:
            w = rng.choice(EN_WORDS)
            out.append(rng.choice([w, w.upper(), w.capitalize(), w.lower()]))
        elif r < 0.8:
            out.append(str(rng.choice([rng.randrange(10), rng.randrange(100), rng.randrange(10**6), 2023, 1080])))
        elif r < 0.9:
            out.append(rng.choice(ZH_PUNCT + list(",.!?;:'\"()-_/")))
        else:
            out.append(rng.choice(URLS))
    sep = rng.choice(["", " ", " ", "  "])
    return sep.join(out)


def fullwidth(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.3:
        n = rng.randint(1, 12)
        return "".join(rng.choice(FULLWIDTH_ASCII) for _ in range(n))
    if r < 0.6:
        w = rng.choice(EN_WORDS + ["ABC123", "iPhone15", "Hello, World!", "2023-10-01"])
        return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" for c in w)
    return rng.choice(ZH_NOUNS) + "".join(rng.choice(FULLWIDTH_ASCII) for _ in range(rng.randint(1, 6))) + \
        rng.choice(ZH_NOUNS)


def accented(rng: random.Random) -> str:
    words = [rng.choice(ACCENTED) for _ in range(rng.randint(1, 5))]
    words = [rng.choice([w, w.upper(), w.lower(), unicodedata.normalize("NFD", w)]) for w in words]
    return rng.choice([" ", "", "-", "，"]).join(words)


def greek(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.4:
        return " ".join(rng.choice(GREEK) for _ in range(rng.randint(1, 4)))
    # Σ next to letters, case-ignorable characters (., ', :, ·, marks, Lm, Sk) and separators.
    alphabet = ["Σ", "Σ", "Σ", "Α", "Β", "α", "σ", "ς", "A", "b", "1", "'", ".", ":", "·", "’", "\u0301", "ʰ",
                "ˆ", "^", "-", " ", "\u200b", "\u00ad", "猫", "ʕ", "\U0001171e", "\u2028", ",", "İ", "\u0345",
                "ǅ", "ᾈ", "\u20dd", rand_post14(rng)]
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10)))


def special_case(rng: random.Random) -> str:
    pool = ["İ", "ı", "I", "i", "ß", "ẞ", "ﬁ", "ﬂ", "ﬀ", "ﬃ", "ﬓ", "ǅ", "ǈ", "ǋ", "ǲ", "Ꭰ", "ꭰ", "Ა", "ა",
            "Ⓐ", "ⓐ", "Ⅰ", "ⅰ", "𐐀", "𐐨", "𞤀", "𞤢", "Ω", "K", "Å", "ϴ", "ẞ", "Ɦ", "Ʞ", "Ꞵ", "\u0130\u0307",
            "\u0345", "ͅΙ", "ΐ", "ᾼ", "ῼ", "Ꟶ", "ꟶ", "Ȿ", "Ɐ", "ʕ", "Ƣ", "Ꝼ", "Ꞔ", "Ꟁ", "Ꟑ", "Ꟙ"] + \
           [chr(c) for c in (0x1C89, 0xA7CB, 0xA7CC, 0xA7DA, 0xA7DC, 0x10D50, 0x10D70)]
    return "".join(rng.choice(pool + ["a", "Z", " ", "-"]) for _ in range(rng.randint(1, 8)))


def emoji(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 6)):
        r = rng.random()
        out.append(rng.choice(EMOJI) if r < 0.6 else rng.choice(ZH_NOUNS + EN_WORDS + [" ", "!", "，"]))
    return "".join(out)


def controls(rng: random.Random) -> str:
    pool = CONTROL + PRIVATE + ["猫", "a", "B", "Σ", "é", " ", "1", "ß", "İ"] + SPACES
    return "".join(rng.choice(pool) for _ in range(rng.randint(1, 10)))


def cjk_and_scripts(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.4:
        cps = [rng.choice(CJK_EDGES) + rng.choice([-1, 0, 0, 1]) for _ in range(rng.randint(1, 6))]
        return rng.choice(["", " ", "a", "Σ"]).join(chr(c) for c in cps)
    if r < 0.7:
        return " ".join(rng.choice(HANGUL + KANA + ZH_NOUNS) for _ in range(rng.randint(1, 4)))
    lo, hi = rng.choice([(0x20000, 0x2A6DF), (0x2A700, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0x30000, 0x3134F),
                         (0xF900, 0xFAFF), (0x2F800, 0x2FA1F), (0x3400, 0x4DBF), (0xAC00, 0xD7A3),
                         (0x1100, 0x11FF), (0x3040, 0x30FF), (0x2E80, 0x2FDF)])
    return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8)))


def combining(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.2:
        return "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 4)))
    base = rng.choice(["a", "E", "Σ", "ı", "猫", "ᄀ", "ㄱ", " ", "", "1", ".", "Ω", "ß", "\u0628", "\u0915"])
    return base + "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 5))) + rng.choice(["", "b", "Σ", " x"])


def long_word(rng: random.Random) -> str:
    n = rng.choice([199, 200, 200, 201, 201, 202, 250, 300, rng.randint(150, 260)])
    unit = rng.choice(["a", "ab", "é", "E\u0301", "1", "ß", "ﬁ", "İ", "x", "Σ", "\u0301", "\u200b", "ςσ", "😀", "한"])
    word = (unit * n)[: n if len(unit) == 1 else n * 2]
    return rng.choice(["", "猫", "a ", "the "]) + word + rng.choice(["", " ok", "，猫", ".", "!"])


def long_text(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.5:
        return "".join(zh_caption(rng) for _ in range(rng.randint(3, 8)))
    if r < 0.8:
        return " ".join(rng.choice(EN_WORDS) for _ in range(rng.randint(40, 80)))
    return "".join(mixed(rng) for _ in range(rng.randint(5, 10)))


def whitespace(rng: random.Random) -> str:
    pool = SPACES + ["猫", "cat", "Σ", ".", "é"]
    return "".join(rng.choice(pool if rng.random() < 0.7 else SPACES) for _ in range(rng.randint(1, 8)))


def random_any(rng: random.Random) -> str:
    return "".join(rand_cp_any(rng) for _ in range(rng.randint(1, 8)))


def random_assigned(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 10)):
        out.append(rand_cp_category(rng) if rng.random() < 0.7 else rng.choice(["a", "Σ", " ", "猫", "E"]))
    return "".join(out)


def post14(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 6)):
        r = rng.random()
        if r < 0.5:
            out.append(rand_post14(rng))
        elif r < 0.6:
            out.append(rng.choice(CHANGED_SINCE_14))
        else:
            out.append(rng.choice(["a", "A", "Σ", "Ω", "é", " ", "猫", "\u0301", ".", "ʰ", "'"]))
    return "".join(out)


def punct_heavy(rng: random.Random) -> str:
    pool = URLS + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ZH_PUNCT + ["¡", "¿", "§", "¶", "†", "‡", "•",
                                                                            "‰", "′", "″", "‹", "›", "«", "»",
                                                                            "⁂", "⸮", "⹀", "、", "〰", "﹏", "＿"]
    return "".join(rng.choice(pool) for _ in range(rng.randint(1, 6)))


HANDWRITTEN = [
    "", " ", "  ", "\t", "\n", "\r\n", "\u3000", "\xa0", "\u2028", "\u2029", " \t\n\r\u3000\xa0 ",
    "\x00", "\ufffd", "\x00\ufffd\x07", "猫", "一只猫", "一只猫 ", " 一只猫", "一只可爱的小猫坐在草地上。",
    "a", "A", "hello world", "Hello, World!", "unaffable", "UNAFFABLE", "iPhone 15 Pro Max", "USB-C 2.0",
    "ＡＢＣ１２３", "ａｂｃ", "Ｈｅｌｌｏ，Ｗｏｒｌｄ！", "café", "CAFÉ", "cafe\u0301", "Ångström", "ÉCOLE",
    "ΟΔΥΣΣΕΥΣ", "Σ", "ΑΣ ΒΣ", "ΑΣ", "ΑΣΑ", "Α.Σ", "Α'Σ", "ΑΣ'", "ΑΣ.", "ΑΣ:Α", "Α\u0301Σ", "Α\u200bΣ",
    "ʕΣ", "aʕΣ", "ʰΣ", "aʰΣ", "AΣʰ", "猫Σ", "AΣ猫", "A Σ", "ΣΣ", "AΣΣ", "AΣΣA", "ΣA", "ǅΣ",
    "İ", "İstanbul", "I\u0307", "ß", "STRASSE", "ﬁ", "ﬁne", "Ǆ", "ǅ", "ǆ",
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇨🇳", "1️⃣",
    "\x07bell", "esc\x1b[0m", "del\x7f", "zw\u200bsp", "zw\u200dj", "\ufeffbom", "a\ufffdb",
    "\ue000", "\uf8ff", "\U000f0000", "a\ue000b", "猫\ue000猫",
    "한국어", "ひらがな", "カタカナ", "\U00020000", "\U0002a6df", "\U0002a6e0", "\U0002b73f", "\U0002cea1",
    "\u0301", "\u0301\u0301", " \u0301 ", "a\u0301", "\u0345", "\U0001d165\U0001d16d", "\U0001d16d\U0001d165",
    "\U0001171e", "a\U0001171eb", "\u0295", "\U00013439", "a\U00013439b", "\U00011b00", "a\U00011b00b",
    "\u1c89", "\ua7cb", "\ua7dc", "\U00010d50", "\U0002ebf0", "\U00031350", "a\u0897b",
    "a" * 199, "a" * 200, "a" * 201, "猫" + "b" * 201, "é" * 200, "é" * 201, "e\u0301" * 200,
    "\u0301" * 300, "ab" * 150, "1" * 200, "1" * 201,
    "the quick brown fox jumps over the lazy dog " * 5, "一只猫" * 40,
    "[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]", "##", "##ing", "#", "##猫", "[unused1]", "<S>", "<T>",
]

SECTIONS = [
    (zh_caption, 5000), (zh_query, 700), (mixed, 3000), (fullwidth, 700), (accented, 1500), (greek, 1100),
    (special_case, 700), (emoji, 900), (controls, 1100), (cjk_and_scripts, 900), (combining, 900),
    (long_word, 150), (long_text, 120), (whitespace, 500), (random_any, 1500), (random_assigned, 1500),
    (post14, 1000), (punct_heavy, 600),
]


def corpus() -> list[str]:
    rng = random.Random(SEED)
    texts = list(HANDWRITTEN)
    for make, count in SECTIONS:
        texts.extend(make(rng) for _ in range(count))
    seen, out = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


# --------------------------------------------------------------------------------------------------
# The exhaustive code-point check and the Unicode 14 table
# --------------------------------------------------------------------------------------------------

def fnv1a(h: int, data: bytes) -> int:
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK64
    return h


def probe_bytes(basic, cp: int) -> bytes:
    """What the Rust test hashes for one code point: each probe's tokens, each followed by 0x00, each
    probe followed by 0x01."""
    out = bytearray()
    c = chr(cp)
    for probe in PROBES:
        for token in basic.tokenize(probe.format(c)):
            out += token.encode("utf-8") + b"\x00"
        out += b"\x01"
    return bytes(out)


def codepoint_hashes(basic) -> list[int]:
    hashes = []
    for block in range(0x110000 // BLOCK):
        h = FNV_OFFSET
        for cp in range(block * BLOCK, (block + 1) * BLOCK):
            if 0xD800 <= cp <= 0xDFFF:
                continue
            h = fnv1a(h, probe_bytes(basic, cp))
        hashes.append(h)
    return hashes


def assigned_ranges() -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    start = None
    for cp in range(0x110001):
        assigned = cp < 0x110000 and unicodedata.category(chr(cp)) != "Cn"
        if assigned and start is None:
            start = cp
        elif not assigned and start is not None:
            runs.append((start, cp - 1))
            start = None
    return runs


def write_table(path: str) -> None:
    runs = assigned_ranges()
    lines = [
        "//! Generated by `tools/gen_tokenizer_cases.py` from Python 3.11's `unicodedata` (Unicode",
        f"//! {unicodedata.unidata_version}): the code points that are assigned (general category other than Cn),",
        "//! as inclusive ranges, sorted. Do not edit by hand.",
        "",
        f"/// Code points assigned in Unicode {unicodedata.unidata_version}, as sorted inclusive ranges.",
        "#[rustfmt::skip]",
        f"pub(super) const ASSIGNED: [(u32, u32); {len(runs)}] = [",
    ]
    row = "   "
    for lo, hi in runs:
        item = f" (0x{lo:X}, 0x{hi:X}),"
        if len(row) + len(item) > 110:
            lines.append(row)
            row = "   "
        row += item
    lines.append(row)
    lines.append("];")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def explain(basic, cp: int) -> None:
    c = chr(cp)
    print(f"U+{cp:04X} {unicodedata.name(c, '<no name>')} category={unicodedata.category(c)} "
          f"combining={unicodedata.combining(c)} lower={c.lower()!r} nfd={unicodedata.normalize('NFD', c)!r}")
    for probe in PROBES:
        print(f"  {probe.format(c)!r:>24} -> {basic.tokenize(probe.format(c))!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cn-clip-dir", help="directory of the cn_clip package (default: the installed one)")
    ap.add_argument("--check-tokenize", action="store_true",
                    help="also check the fixture against cn_clip.clip.tokenize at context 52 and 8 (imports torch)")
    ap.add_argument("--explain", type=lambda s: int(s, 0), help="print what Python does with one code point")
    args = ap.parse_args()

    if unicodedata.unidata_version != "14.0.0":
        sys.exit(f"this needs Python 3.11 (Unicode 14.0.0); this Python has Unicode {unicodedata.unidata_version}, "
                 "which changes str.lower/NFD/categories and so the expected ids")
    module, tok = load_bert_tokenizer(args.cn_clip_dir)
    if args.explain is not None:
        explain(tok.basic_tokenizer, args.explain)
        return

    os.makedirs(FIXTURES, exist_ok=True)
    texts = corpus()
    path = os.path.join(FIXTURES, "corpus.jsonl")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for text in texts:
            ids = tok.convert_tokens_to_ids(tok.tokenize(text))
            f.write(json.dumps({"text": text, "ids": ids}, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"{path}: {len(texts)} texts, {os.path.getsize(path)} bytes")

    if args.check_tokenize:
        from cn_clip.clip import tokenize  # noqa: E402 (torch)
        cls, sep = tok.vocab["[CLS]"], tok.vocab["[SEP]"]
        for ctx in (52, 8, 2):
            got = tokenize(texts, context_length=ctx).tolist()
            for text, row in zip(texts, got):
                ids = tok.convert_tokens_to_ids(tok.tokenize(text))
                want = [cls] + ids[: ctx - 2] + [sep]
                want += [0] * (ctx - len(want))
                assert row == want, (ctx, text, row, want)
        print("cn_clip.clip.tokenize agrees with [CLS] + ids[:ctx-2] + [SEP] + zero padding at 52, 8 and 2")

    write_table(TABLE_RS)
    print(f"{TABLE_RS}: written")

    hashes = codepoint_hashes(tok.basic_tokenizer)
    path = os.path.join(FIXTURES, "codepoints.txt")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(f"# cn_clip BasicTokenizer on every code point, Python {sys.version.split()[0]}, Unicode "
                f"{unicodedata.unidata_version}; written by tools/gen_tokenizer_cases.py.\n")
        f.write(f"# probes {json.dumps(PROBES)}; one FNV-1a 64 hash per block of {BLOCK} code points.\n")
        for block, h in enumerate(hashes):
            f.write(f"{block * BLOCK:06X} {h:016x}\n")
    print(f"{path}: {len(hashes)} blocks")


if __name__ == "__main__":
    main()
