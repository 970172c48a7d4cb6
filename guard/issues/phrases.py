"""Phrases that name an issue of a known kind, built from the customer's words.

Chinese: the customer's clause around the cue, trimmed to a noun phrase ("右边口袋开线",
"裙子前面有油渍"); when the clause does not read as one, the item named and the kind's usual
name ("鞋子尺码偏小"). English: the kind's usual name with the item and details the customer
gave ("bleach spot on your navy hoodie", "wrong size sent (8 instead of 10)"), so that it reads
in "We have logged the {phrase}".
"""

from __future__ import annotations

import re
from collections.abc import Callable

# ------------------------------------------------------------------ Chinese

_ZH_ITEMS = [
    "牛仔裤",
    "连衣裙",
    "羽绒服",
    "电饭煲",
    "吹风机",
    "电动牙刷",
    "蓝牙耳机",
    "咖啡杯",
    "玻璃杯",
    "花瓶",
    "台灯",
    "充电头",
    "说明书",
    "T恤",
    "卫衣",
    "衬衫",
    "毛衣",
    "外套",
    "大衣",
    "裙子",
    "裤子",
    "鞋子",
    "包包",
    "袜子",
    "帽子",
    "围巾",
    "耳机",
    "杯子",
    "盘子",
    "碗",
    "鞋",
    "包",
    "裤",
    "裙",
    "箱子",
    "包裹",
    "订单",
]
_ZH_ITEM = re.compile("|".join(re.escape(i) for i in _ZH_ITEMS), re.I)
_ZH_SPLIT = re.compile(r"[，。！？!?,.;；、:：~…\s]+")
_ZH_AFTER = re.compile(r"^.*?(?:看到|发现|一看|结果|但是|可是|只是|但|可)")
_ZH_LEADING = re.compile(
    r"^(?:到我手里|到手里|到手|你好|您好|亲|请问|我的|我是|我|你们|这个|那个|这件|那件|这双|那双|这|那|刚刚|刚|新买的|买的|收到的|收到|打开|"
    r"而且|还|又|都|里面|快递放门口|根本|像是|好像)+"
)
_ZH_FILLER = re.compile(r"那条|那里|这里|那边|这边|(?<!缺了)(?<!缺)一[处块道圈点条截]|都|也|就|竟然|居然")
_ZH_REWRITES = (
    (re.compile(r"有一个"), "有"),
    (re.compile(r"有被"), "被"),
    (re.compile(r"了?还没收到|了?还没到(?!账)"), "未收到"),
    (re.compile(r"^少了"), "少发"),
    (re.compile(r"的线脱$"), "脱线"),
    (re.compile(r"掉$"), "脱落"),
    (re.compile(r"裂$"), "开裂"),
    (re.compile(r"碎$"), "碎裂"),
    (re.compile(r"(?<!不)[了的]+$"), ""),
)
_ZH_STOP = re.compile(r"了(?!还|两次|一块)|吗|呢|吧|啊|呀|么|怎么|是不是|要不要|这质量")
_ZH_QUESTION = re.compile(r"怎么|什么|为什么|是不是|吗|呢|？|\?|要不要|能不能|还能|这样|不知道|会不会|没坏")
_ZH_WEAK_START = re.compile(r"^[小大太是有没就才也还很被给不]")
_ZH_MUST = {
    "wrong_item": re.compile(r"发|寄|收到|不是"),
    "late_delivery": re.compile(r"没|未|延|超|第|还"),
    "wrong_charge": re.compile(r"扣|收|付|价|减"),
}
"""A clause names these kinds only when it also says what went wrong (not just "下单选的XL")."""
_ZH_NAMES = {
    "damaged_parcel": ("外包装破损", "外包装破损"),
    "broken_item": ("破损", "商品破损"),
    "missing_item": ("漏发", "商品缺件"),
    "wrong_item": ("发错", "发错商品"),
    "open_seam": ("开线", "衣物开线"),
    "stain": ("有污渍", "商品有污渍"),
    "hole_tear": ("破洞", "商品破洞"),
    "broken_zipper_button": ("拉链或扣子损坏", "拉链或扣子损坏"),
    "color_mismatch": ("色差", "颜色与描述不符"),
    "size_fit": ("尺码不合适", "尺码不合适"),
    "not_working": ("无法正常使用", "商品无法正常使用"),
    "wrong_charge": ("扣款金额有误", "扣款金额有误"),
    "tracking_stuck": ("物流信息未更新", "物流信息未更新"),
    "app_error": ("系统报错", "系统报错"),
    "late_delivery": ("发货延误", "发货延误"),
    "not_received": ("显示签收但未收到货", "显示签收但未收到货"),
    "refund_delay": ("退款未到账", "退款未到账"),
}
"""Each kind's usual name: after the item named (``(with_item, alone)``)."""
_ZH_ITEM_KINDS = {
    "broken_item",
    "open_seam",
    "stain",
    "hole_tear",
    "color_mismatch",
    "size_fit",
    "not_working",
}
_ZH_MIN, _ZH_MAX = 3, 14


def zh_phrase(kind: str, cue: re.Match[str], in_question: bool, question: str, image_text: str) -> str | None:
    """A Chinese noun phrase for ``kind``; ``cue`` is its cue's match in the question or the photo's text."""
    clause = _zh_clause(kind, question if in_question else image_text, cue)
    return clause if clause is not None else _zh_named(kind, question, cue.group(cue.lastindex or 0))


def _zh_clause(kind: str, text: str, cue: re.Match[str]) -> str | None:
    group = cue.lastindex or 0  # a pattern's group, when it has one, is the cue itself
    start, end = cue.start(group), cue.end(group)
    left = max((b.end() for b in _ZH_SPLIT.finditer(text, 0, start)), default=0)
    right_bound = next((b.start() for b in _ZH_SPLIT.finditer(text, end)), len(text))
    # Every match of the same cue in the clause belongs to the phrase ("被扣了两次").
    for m in cue.re.finditer(text, end, right_bound):
        end = m.end()
    tail = text[end:right_bound]
    stop = _ZH_STOP.search(tail)
    phrase = text[left:end] + (tail[: stop.start()] if stop else tail)
    if _ZH_QUESTION.search(phrase):
        return None
    after = _ZH_AFTER.match(phrase[: start - left])
    if after is not None:
        phrase = phrase[after.end() :]
    phrase = _ZH_FILLER.sub("", _ZH_LEADING.sub("", phrase))
    for pattern, repl in _ZH_REWRITES:
        phrase = pattern.sub(repl, phrase)
    must = _ZH_MUST.get(kind)
    if not _ZH_MIN <= len(phrase) <= _ZH_MAX or _ZH_WEAK_START.match(phrase):
        return None
    if must is not None and not must.search(phrase):
        return None
    return phrase


def _zh_named(kind: str, question: str, cue: str) -> str:
    with_item, alone = _ZH_NAMES[kind]
    if kind == "broken_zipper_button":
        return "拉链损坏" if "拉" in cue else "扣子脱落"
    if kind == "wrong_item" and re.search(r"码|号|XL|领标|吊牌|\b[SML]\b", question + cue, re.I):
        return "发错尺码"
    if kind in _ZH_ITEM_KINDS:
        item = _ZH_ITEM.search(question)
        if item is not None:
            return item.group(0) + with_item
    return alone


# ------------------------------------------------------------------ English

_COLOURS = [
    "black",
    "white",
    "grey",
    "gray",
    "navy",
    "blue",
    "red",
    "green",
    "yellow",
    "pink",
    "purple",
    "brown",
    "beige",
    "khaki",
    "cream",
    "orange",
    "silver",
    "gold",
]
_EN_ITEMS = [
    "t-shirt",
    "shirts",
    "shirt",
    "jeans",
    "trousers",
    "pants",
    "pant",
    "hoodie",
    "jacket",
    "coat",
    "sweater",
    "jumper",
    "dress",
    "skirt",
    "shorts",
    "leggings",
    "sleeves",
    "sleeve",
    "pocket",
    "collar",
    "shoes",
    "boots",
    "sneakers",
    "trainers",
    "socks",
    "bag",
    "backpack",
    "mug",
    "cup",
    "plate",
    "dish",
    "dishes",
    "bowl",
    "glasses",
    "glass",
    "bottle",
    "jar",
    "vase",
    "frame",
    "lamp",
    "blender",
    "charger",
    "phone",
    "headphones",
    "earbuds",
    "grinder",
    "mixer",
    "kettle",
    "toaster",
    "speaker",
    "tv",
    "television",
    "eggs",
]
_EN_NOUN = "(?:" + "|".join(re.escape(i) for i in _EN_ITEMS) + ")"
_EN_ITEM = re.compile(
    r"\b(?:(" + "|".join(_COLOURS) + r")\s+)?(" + _EN_NOUN + r"(?:\s+" + _EN_NOUN + r")?)\b", re.I
)
_NUMBER = r"(?:\d+(?:\.\d+)?|one|two|three|four|five|six|seven|eight|nine|ten|a|an)"
_DURATION = re.compile(
    r"\b(" + _NUMBER + r"|a few|several|almost (?:two|three)|over a) (days?|weeks?|months?)\b", re.I
)
_MONEY = re.compile(r"[$¥￥€£]\s?\d+(?:[.,]\d{2})?|\b\d+\.\d{2}\b")
_CODE = re.compile(r"\b(?:error|code)[: #]*([A-Z]{0,4}-?\d{3,5})\b|\b([A-Z]{2,}-\d{3,5})\b", re.I)
_PROMO = re.compile(r"\b(?:promo|discount|coupon) code\W+([A-Z0-9]{4,16})\b")
_INSTEAD = re.compile(
    r"\b(?:size |a )?(\w+(?: size)?) instead of (?:the |a |size )?(\w+)"
    r"|requested for (\d+) size but i received (\d+)",
    re.I,
)
_STAIN_NOUN = re.compile(
    r"\b((?:bleach|oil|ink|grease|pen|yellow|brown|grey|white|dark) (?:spots?|marks?|stains?|patch))\b"
    r"|\b(stains?|spots?|marks?)\b",
    re.I,
)
_PARCEL_DAMAGE = re.compile(
    r"\b(crushed|squashed|caved in|dented|smashed|crumpled|punctured|torn open|ripped open|torn|ripped"
    r"|split|damaged)\b",
    re.I,
)
_BOX_NOUN = re.compile(r"\b(box(?:es)?|parcels?|packages?|cartons?|pallet|packaging)\b", re.I)


def en_phrase(kind: str, cue: re.Match[str], in_question: bool, question: str, image_text: str) -> str | None:
    """An English noun phrase for ``kind`` that reads after "We have logged the"."""
    text = question if in_question else f"{question}\n{image_text}"
    both = f"{question}\n{image_text}"
    item = _item(question)
    on_item = f" on your {item}" if item else ""
    builders: dict[str, Callable[[], str]] = {
        "open_seam": lambda: (
            ("loose stitching" if re.search(r"stitch", text, re.I) else "open seam") + on_item
        ),
        "stain": lambda: _stain(text) + on_item,
        "hole_tear": lambda: _hole(text) + (f" in your {item}" if item else ""),
        "broken_zipper_button": lambda: _zip_or_button(text, item),
        "color_mismatch": lambda: "colour difference" + on_item,
        "size_fit": lambda: f"fit of your {item}" if item else "fit problem",
        "wrong_item": lambda: _wrong_item(text),
        "missing_item": lambda: _missing(text, item),
        "broken_item": lambda: _broken(text, item),
        "damaged_parcel": lambda: _parcel(text),
        "not_working": lambda: f"fault with your {item}" if item else "fault with your item",
        "wrong_charge": lambda: _charge(text, both),
        "late_delivery": lambda: _late(text),
        "tracking_stuck": lambda: (
            "tracking number not found"
            if re.search(r"not found|查不到", both, re.I)
            else "tracking that has stopped updating"
        ),
        "not_received": lambda: "parcel marked delivered but not received",
        "refund_delay": lambda: "refund that has not arrived",
        "app_error": lambda: _app_error(both),
    }
    build = builders.get(kind)
    return build() if build is not None else None


def _item(text: str) -> str | None:
    m = _EN_ITEM.search(text)
    if m is None:
        return None
    colour, noun = m.group(1), m.group(2).lower()
    return f"{colour.lower()} {noun}" if colour else noun


def _stain(text: str) -> str:
    m = _STAIN_NOUN.search(text)
    return (m.group(1) or m.group(2)).lower() if m else "stain"


def _hole(text: str) -> str:
    if re.search(r"blade cuts?", text, re.I):
        return "holes and cuts"
    if re.search(r"\bholes\b", text, re.I):
        return "holes"
    if re.search(r"\bhole\b", text, re.I):
        return "hole"
    return "tear" if re.search(r"\b(?:torn|tear)\b", text, re.I) else "rip"


def _zip_or_button(text: str, item: str | None) -> str:
    on = f" on your {item}" if item else ""
    return ("broken zip" if re.search(r"\bzip", text, re.I) else "loose button") + on


def _wrong_item(text: str) -> str:
    what = "size" if re.search(r"\bsize|\b(?:xl|large|medium|small)\b|\btag\b", text, re.I) else "item"
    if what == "item" and re.search(r"colou?r", text, re.I):
        what = "colour"
    m = _INSTEAD.search(text)
    if m is not None:
        got, wanted = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        return f"wrong {what} sent ({got} instead of {wanted})"
    return f"wrong {what} sent"


def _missing(text: str, item: str | None) -> str:
    if re.search(r"\bempty\b|nothing inside", text, re.I):
        return "empty box"
    m = re.search(r"\bonly (\d+|one|two|three|four|five)\b", text, re.I)
    if m and item:
        return f"missing {item} (only {m.group(1)} arrived)"
    return f"missing {item}" if item else "missing item"


def _broken(text: str, item: str | None) -> str:
    m = re.search(r"\b(cracked|crack|shattered|chipped|leaked|broken)\b", text, re.I)
    word = (m.group(1).lower() if m else "broken").replace("crack", "cracked").replace("crackeded", "cracked")
    return f"{word} {item}" if item else "broken item"


def _parcel(text: str) -> str:
    damage = _PARCEL_DAMAGE.search(text)
    box = _BOX_NOUN.search(text)
    noun = box.group(1).lower() if box else "parcel"
    return f"{damage.group(1).lower()} {noun}" if damage else f"damaged {noun}"


def _charge(text: str, both: str) -> str:
    if re.search(r"twice|double|duplicate", text, re.I):
        amounts = _MONEY.findall(both)
        repeated = next((a for a in amounts if amounts.count(a) > 1), None)
        return f"duplicate charge of {repeated.lstrip('-')}" if repeated else "duplicate charge"
    m = re.search(r"(\d+(?:\.\d{2})?)[^.!?]{0,30}\breceipt says (\d+(?:\.\d{2})?)", text, re.I)
    if m:
        return f"charge of {m.group(2)} instead of {m.group(1)}"
    m = re.search(r"charged for (\w+ \w+) but only ordered (\w+)", text, re.I)
    if m:
        return f"charge for {m.group(1)} instead of {m.group(2)}"
    return "incorrect charge"


def _late(text: str) -> str:
    m = _DURATION.search(text)
    return f"delay with your order ({m.group(0).lower()})" if m else "delay with your order"


def _app_error(text: str) -> str:
    promo = _PROMO.search(text)
    if promo:
        return f"promo code {promo.group(1)} being rejected"
    code = _CODE.search(text)
    if code:
        return f"error {code.group(1) or code.group(2)}"
    return "error you are seeing"
