"""Find the customer's issue in their words: the phrase a specific follow-up names.

Pure functions, no models: a lexicon of issue words per language. For Chinese the phrase is
the customer's own clause around the issue word ("右边口袋开线"); for English it is a
canonical phrase for the issue, with the item it concerns when one is named
("open seam on your jeans"). None when nothing is recognised, and the follow-up then
reads naturally without it.
"""

from __future__ import annotations

import re

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def detect_locale(text: str, requested: str | None = None) -> str:
    """ "zh" or "en": the requested locale when it is one of those, else by the script of ``text``."""
    if requested:
        tag = requested.strip().lower().replace("_", "-")
        if tag.startswith("zh"):
            return "zh"
        if tag.startswith("en"):
            return "en"
    cjk = len(_CJK.findall(text))
    latin_words = len(re.findall(r"[A-Za-z]+", text))
    return "zh" if cjk and cjk >= latin_words else "en"


# Chinese: issue words; the phrase is the clause that holds one, trimmed.
_ZH_ISSUE_WORDS = (
    "开线",
    "脱线",
    "缝线",
    "车线",
    "压扁",
    "压坏",
    "压变形",
    "变形",
    "塌",
    "破损",
    "破洞",
    "洞",
    "撕",
    "划",
    "裂",
    "碎",
    "破",
    "缺",
    "少了",
    "少发",
    "漏发",
    "空的",
    "空盒",
    "发错",
    "不是我买",
    "污渍",
    "油渍",
    "印子",
    "渍",
    "勾破",
    "拉链",
    "扣子",
    "纽扣",
    "色差",
    "颜色",
    "偏小",
    "偏大",
    "太长",
    "太短",
    "挤脚",
    "尺码",
    "没反应",
    "没有声音",
    "无声",
    "充不进电",
    "不出热风",
    "坏了",
    "失灵",
    "扣错",
    "扣了两次",
    "多扣",
    "重复扣",
    "没减",
    "收我",
    "物流",
    "单号",
    "查不到",
    "报错",
    "失败",
    "冻结",
    "登录不了",
    "没收到",
    "还没收到",
    "未发货",
    "待发货",
    "发货",
    "退款",
    "延误",
)
_ZH_CLAUSE_SPLIT = re.compile(r"[，。！？!?,.;；、\s~～…]+")
_ZH_LEADING = re.compile(
    r"^(?:到我手里|到手里|到手|你好|您好|亲|请问|我的|我是|我|你们|这个|那个|刚|新买的|买的|收到的|收到|结果|但是|可是|只是|就是|而且)+"
)
_ZH_TRAILING = re.compile(r"(?:成这样|这样|怎么办|怎么处理|怎么回事|是不是|吗|呢|吧|啊|呀|了|的|么|么办)+$")
_ZH_MAX = 14

# English: (pattern, canonical phrase); "{item}" is filled with the item named, when one is.
_EN_ISSUES: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), with_item, plain)
    for p, with_item, plain in (
        (
            r"\bseams?\b|\bstitch(?:es|ing)?\b|came (?:apart|unstitched)",
            "open seam on your {item}",
            "open seam",
        ),
        (r"\bzip(?:per)?\b", "broken zip on your {item}", "broken zip"),
        (r"\bbutton\b", "loose button on your {item}", "loose button"),
        (r"\bstain(?:ed|s)?\b|\bbleach\b|\bspot\b", "stain on your {item}", "stain"),
        (r"\bholes?\b|\btorn\b|\brip(?:ped)?\b|\btear\b|\bcuts?\b", "damage to your {item}", "tear"),
        (
            r"charged (?:me )?twice|double[- ]charged|duplicate charge|charged for (?:two|2|three|3)"
            r"|receipt says|instead of the sale|wrong (?:amount|price)|overcharged",
            "incorrect charge",
            "incorrect charge",
        ),
        (r"\btracking\b|not found|hasn'?t moved|no update", "tracking problem", "tracking problem"),
        (
            r"sent me|received .* instead|received \d+|instead of|wrong (?:item|size|colou?r)"
            r"|not (?:what|this)|ordered .* not",
            "wrong item",
            "wrong item",
        ),
        (
            r"\berror\b|won'?t let me|declined|rejected|can'?t log ?in|invalid",
            "error you are seeing",
            "error",
        ),
        (
            r"\bcrush(?:ed)?\b|squash(?:ed)?|caved|dented|smashed|pushed in|crumpled",
            "damaged parcel",
            "damaged parcel",
        ),
        (
            r"\bcrack(?:ed|s)?\b|\bbroken\b|\bbroke\b|shattered|\bleak(?:ed|ing)?\b",
            "broken {item}",
            "broken item",
        ),
        (
            r"\bempty\b|\bmissing\b|only (?:got|\d+|one|two|three|four)|wasn'?t in|aren'?t in"
            r"|not in (?:it|the box)",
            "missing item",
            "missing item",
        ),
        (r"\bcolou?r\b", "colour difference on your {item}", "colour difference"),
        (
            r"too (?:big|small|short|long|tight)|doesn'?t fit|size",
            "fit problem with your {item}",
            "fit problem",
        ),
        (
            r"not working|stopped working|won'?t (?:turn|charge|start)|stops after|no sound"
            r"|gets (?:really )?hot"
            r"|doesn'?t work|can'?t turn",
            "fault with your {item}",
            "fault",
        ),
        (r"delivered but|says delivered|marked (?:as )?delivered", "missing delivery", "missing delivery"),
        (
            r"\blate\b|supposed to arrive|still (?:not|hasn'?t)|where is it|weeks?\b|days? late|processing",
            "delayed delivery",
            "delayed delivery",
        ),
        (r"\brefund\b", "refund delay", "refund delay"),
    )
)
_EN_ITEMS = (
    "jeans",
    "trousers",
    "pants",
    "pant",
    "hoodie",
    "jacket",
    "coat",
    "shirt",
    "t-shirt",
    "sweater",
    "dress",
    "skirt",
    "sleeve",
    "sleeves",
    "pocket",
    "collar",
    "shoes",
    "boots",
    "bag",
    "mug",
    "cup",
    "plate",
    "dish",
    "glass",
    "bottle",
    "jar",
    "lamp",
    "vase",
    "frame",
    "blender",
    "charger",
    "phone",
    "headphones",
    "grinder",
    "mixer",
    "kettle",
    "toaster",
    "zip",
)
_EN_ITEM = re.compile(r"\b(" + "|".join(re.escape(i) for i in _EN_ITEMS) + r")\b", re.IGNORECASE)


def issue_phrase(text: str, locale: str) -> str | None:
    """The phrase naming the customer's issue in ``text`` (question, then photo text), or None."""
    text = " ".join(text.split())
    if not text:
        return None
    return _zh_phrase(text) if locale == "zh" else _en_phrase(text)


def _zh_phrase(text: str) -> str | None:
    for clause in _ZH_CLAUSE_SPLIT.split(text):
        # "易碎" (fragile) is a label on the box, not the damage.
        word = next((w for w in _ZH_ISSUE_WORDS if w in clause.replace("易碎", "")), None)
        if word is None:
            continue
        phrase = _ZH_TRAILING.sub("", _ZH_LEADING.sub("", clause)).replace("是不是", "").replace("是否", "")
        if word not in phrase:
            phrase = word
        if len(phrase) > _ZH_MAX:
            start = max(0, phrase.index(word) - 4)
            phrase = phrase[start : start + _ZH_MAX]
        if _CJK.search(phrase):
            return phrase
    return None


def _en_phrase(text: str) -> str | None:
    for pattern, with_item, plain in _EN_ISSUES:
        if not pattern.search(text):
            continue
        if "{item}" in with_item:
            item = _EN_ITEM.search(text)
            if item is not None and item.group(1).lower() != "zip":
                return with_item.format(item=item.group(1).lower())
        return plain
    return None
