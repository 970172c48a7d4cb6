"""Words that state an after-sales problem, per issue kind and language.

Each cue is a regular expression over plain text (see guard.issues.text), case ignored. A cue
found in the question or in the photo's text is evidence for its kind (a feature of the fitted
issue model) and marks where the customer names the problem (the phrase a follow-up quotes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

KINDS: tuple[str, ...] = (
    "damaged_parcel",
    "broken_item",
    "missing_item",
    "wrong_item",
    "open_seam",
    "stain",
    "hole_tear",
    "broken_zipper_button",
    "color_mismatch",
    "size_fit",
    "not_working",
    "wrong_charge",
    "tracking_stuck",
    "app_error",
    "late_delivery",
    "not_received",
    "refund_delay",
)
"""The issue kinds the guard names; a reading whose kind is none of these is ``other``."""

_BOX_EN = r"(?:box(?:es)?|parcels?|packages?|cartons?|packaging|packets?|pallet|envelope)"
_ITEM_ZH = r"(?:杯|碗|盘|碟|瓶|玻璃|花瓶|镜|屏|壶|罐|灯|陶瓷|瓷)"
_BOX_ZH = r"(?:箱|盒|包裹|快递|外包装|包装|纸箱|件)"
_COLOUR_EN = r"(?:grey|gray|beige|white|black|blue|red|green|pink|brown|navy|purple|yellow|cream)"

_EN: Mapping[str, tuple[str, ...]] = {
    "damaged_parcel": (
        _BOX_EN + r"\b[^.!?]{0,40}\b(?:crush\w*|squash\w*|caved|dent\w*|smash\w*|crumpl\w*|torn|ripped"
        r"|punctur\w*|split|damaged|pushed in|broken open|wet|soaked)",
        r"\b(?:crushed|squashed|caved in|dented|smashed|crumpled|punctured|holes? punched)\b",
        r"\btorn open\b|\bripped open\b|tape was (?:hanging|off|cut)",
    ),
    "broken_item": (
        r"\b(?:crack(?:ed|s)?|shatter\w*|chipped|chips?|smashed to pieces|in pieces)\b",
        r"\b(?:broken|broke|leak(?:ed|ing|s)?)\b",
        r"\brattles?\b",
    ),
    "missing_item": (
        r"\b(?:empty|missing)\b",
        r"\bonly (?:got|received|had|\d+|one|two|three|four|five|six|half)\b",
        r"\b(?:was|were|is|are)n'?t (?:in|inside) (?:it|the box|the package)\b|\bnot in (?:it|the box)\b",
        r"\bnothing (?:inside|in it|in the box)\b|\bjust the (?:case|box)\b",
        r"\b(?:sachets?|pieces?|items?) (?:short|less)\b|\binstead of \d+ (?:sachets|pieces|items)\b",
    ),
    "wrong_item": (
        r"\bsent (?:me )?(?:a |the )?(?:wrong|different|size|\d)",
        r"\bwrong (?:item|product|size|colou?r|model|one|thing|order)\b",
        r"\b(?:received|got|sent)\b[^.!?]{0,40}\binstead of\b",
        r"\bordered\b[^.!?]{0,40}\b(?:received|got|sent|came)\b[^.!?]{0,30}\b(?:different|instead|wrong)\b",
        r"\b(?:requested|ordered) (?:for )?(?:a )?(?:size )?\d+[^.!?]{0,30}\breceived\b",
        r"\bnot (?:this|what i ordered)\b|\bnot the (?:one|item) i ordered\b",
    ),
    "open_seam": (
        r"\b(?:in)?seams?\b",
        r"\bstitch(?:es|ing|ed)?\b|\bunstitched\b",
        r"\bthreads? (?:came|coming|are coming) (?:out|loose|undone)\b",
    ),
    "stain": (
        r"\bstain(?:s|ed)?\b|\bbleach\w*\b",
        r"\b(?:oil|ink|grease|dirt|dirty|yellow|brown|white) (?:spots?|marks?|patch(?:es)?)\b",
        r"\bspots?\b|\bsmudge\w*\b|\bdiscolou?r\w*\b",
        r"\b(?:dark|black|red|grey|gr[ae]y|blue|green|pen) marks?\b|\bmarks? (?:on|that)\b",
    ),
    "hole_tear": (
        r"\bholes?\b",
        r"\b(?:torn|tear|tears|ripped|rip|rips)\b",
        r"\b(?:blade )?cuts?\b|\bsnag\w*\b|\bfray\w*\b",
    ),
    "broken_zipper_button": (
        r"\bzip(?:per)?s?\b",
        r"\bbuttons?\b|\bpress[- ]?studs?\b|\bsnaps?\b|\bmetallic cap\b",
    ),
    "color_mismatch": (
        r"\bcolou?rs?\b(?![^.!?]{0,30}\b(?:sent|received a different)\b)",
        r"\bnot as shown\b|\bdifferent from the (?:picture|photo|website|listing)\b",
        r"\b(?:is|looks?) (?:actually )?(?:like|more) (?:khaki|grey|gray|brown|yellow|green|blue|pink)\b",
        r"\bshade\b|\b(?:much |a lot |far )?(?:darker|lighter|brighter|duller|paler) than\b",
    ),
    "size_fit": (
        r"\btoo (?:big|small|short|long|tight|loose|large|narrow|wide)\b",
        r"\b(?:does ?n[o']?t|do ?n[o']?t|not) fits?\b|\bfits? like\b|\bfits? (?:too|very)\b",
        r"\b(?:a (?:bit|little) )?(?:short|tight|loose|long) (?:when|at|on|around)\b",
        r"\bsleeves? (?:are|is) (?:a bit |too )?(?:short|long)\b|\bsize (?:too|is)\b",
    ),
    "not_working": (
        r"(?<!zip is )(?<!zipper is )(?<!button is )"
        r"\b(?:not|stopped|isn'?t|doesn'?t|does not|won'?t) "
        r"(?:work(?:ing)?|turn on|charge|charging|start|switch)\b",
        r"\bstops after\b|\bcuts? out\b|\bno sound\b|\bfaulty\b|\bdead on arrival\b",
        r"\bgets (?:really |very )?hot\b|\boverheat\w*\b|\bcharging slowly\b|\bcan'?t turn\b|\bregulator\b",
    ),
    "wrong_charge": (
        r"\bcharged\b|\bovercharg\w*\b|\bbilled\b|\bdouble[- ]charg\w*\b|\bcharge(?:s)? twice\b",
        r"\breceipt\b|\bon sale\b|\bsale price\b|\bwrong (?:amount|price)\b|\bpaid (?:more|extra|twice)\b",
        r"\bonly wanted one\b|\bquantity\b",
    ),
    "tracking_stuck": (
        r"\btracking\b[^.!?]{0,40}\b(?:hasn'?t|not|no|stuck|moved|updated|found)\b",
        r"\bhasn'?t moved\b|\bno (?:tracking )?updates?\b|\bnot found\b|\blabel created\b|\bstuck\b",
    ),
    "app_error": (
        r"\berror\b|\bcrash\w*\b|\bfreez\w*\b",
        r"\bwon'?t let me\b|\bdeclined\b|\brejected\b|\binvalid\b|\bexpired\b|\balready (?:been )?redeemed\b",
        r"\bcan'?t (?:log ?in|sign in|check ?out|pay|place)\b",
    ),
    "late_delivery": (
        r"\blate\b|\bdelay\w*\b|\bsupposed to (?:arrive|be here|come)\b",
        r"\b(?:it'?s|it has|has) been (?:\d+|one|two|three|four|five|six|a few|several) (?:days|weeks)\b",
        r"\bwhere is (?:it|my order)\b|\bstill (?:not here|hasn'?t arrived|waiting)\b|\bprocessing\b",
        r"\b(?:a|one|two|three) weeks? later\b|\bexpress shipping\b",
    ),
    "not_received": (
        r"\b(?:says|marked|shows|showing) (?:as )?delivered\b|\bdelivered but\b",
        r"\bnothing at (?:my|the) door\b|\bnever (?:arrived|received|got)\b|\bnot received\b",
    ),
    "refund_delay": (
        r"\brefund\w*\b[^.!?]{0,40}\b(?:not|never|still|yet|where)\b",
        r"\bwhere is my refund\b|\bhaven'?t (?:got|received) (?:my )?(?:refund|money)\b",
    ),
}

_ZH: Mapping[str, tuple[str, ...]] = {
    "damaged_parcel": (
        _BOX_ZH + r"[^，。！？]{0,8}(?:压|扁|塌|破|烂|撕|洞|窟窿|口子|变形|划|捅|开了|开的|湿)",
        r"封箱胶|胶带[^，。！？]{0,4}(?:没|开|破)",
        r"压扁|压变形|压坏了?|压塌|塌了|塌陷|捅了|挤压|变形|压成|压得",
        r"(?:箱|盒)?角[^，。！？]{0,3}(?:破|烂|撕|压)",
    ),
    "broken_item": (
        _ITEM_ZH + r"(?:(?!不知道|会不会)[^，。！？]){0,6}(?:碎|裂|坏(?!没)|破|缺了?一块|磕)",
        r"^(?!.*(?:裙|裤|衣|衫|袖|领|帽|袜|鞋)).*?(碎了|碎成|(?<!线)裂开|(?<!线)裂了|摔坏|磕坏|缺了一块)",
    ),
    "missing_item": (
        r"少了|少发|漏发|缺(?!了一块)|空的|空盒|空箱|只收到|只到了|只有一|没有(?:说明书|配件|充电|保修)|东西呢|没给|没附",
        r"(?:说明书|配件|保修卡|赠品|零件|充电器|充电线)[^，。！？]{0,6}(?:都)?没(?:有|给)",
    ),
    "wrong_item": (
        r"发错|不是我(?:买|要|订)的|给我寄了|寄了一|发过来的是|发成|发了|收到的是|里面是一",
        r"(?:下单|我买|买的|选的|拍的)[^，。！？]{0,6}(?:xl|xxl|l|m|s|码|号)[^。！？]{0,12}(?:发|收到|寄|给我)",
    ),
    "open_seam": (
        r"开线|脱线|缝线|车线|线脱|线头|开缝|裂线|线断",
        r"线[^，。！？]{0,3}(?:崩|开了|断|松|散)",
    ),
    "stain": (r"污渍|油渍|渍|印子|污点|脏|黄斑|斑点|斑|霉",),
    "hole_tear": (r"破洞|小洞|洞|窟窿|破了个?口子|口子|勾破|勾丝|撕破|破口|划破|破了|磨破",),
    "broken_zipper_button": (r"拉链|扣子|纽扣|拉头|按扣|扣掉|扣眼",),
    "color_mismatch": (
        r"色差|颜色|发黄(?!的?(?:印|渍|斑|圈|痕))|偏黄|一深一浅|图片差|和图片|不是图上|褪色|详情页",
        r"实物|明显的.{0,2}色|像.{0,2}色",
    ),
    "size_fit": (
        r"偏小|偏大|小了|大了|太长|太短|太紧|太松|太大|太小|挤脚|拖地|一件大一件小",
        r"尺码|码数|胸围|腰围",
    ),
    "not_working": (
        r"没反应|没有?(?:一点)?反应|反应都没有|没有声音|无声|充不进电|不出热风|只吹冷风|失灵|坏了|不亮|不工作|开不了机|不转|不通电|死机|不能用|用不了",
    ),
    "wrong_charge": (
        r"扣错|扣了两次|扣两次|扣了我两次|两次钱|重复扣|多扣|扣款|没减|原价|收我|多收|扣了|实付|被扣",
        r"\d+[^，。！？]{0,6}(?:收|扣|付)[^，。！？]{0,3}\d+",
    ),
    "tracking_stuck": (
        r"物流[^，。！？]{0,6}(?:没动|不动|没更新|未更新|停|没变)|查不到|单号|没有物流|物流信息",
    ),
    "app_error": (
        r"报错|提交失败|失败|冻结|登录不了|登不上|闪退|错误码|打不开|无法(?:登录|支付|下单)|系统繁忙",
    ),
    "late_delivery": (
        r"还没收到|没收到|未发货|待发货|还没发货|发货|次日达|都第.天|几天了|延误|太慢|还没到(?!账)",
        r"(?:下单|付款|买了|等了|已经|都)[^，。！？]{0,4}[\d一二三四五六七八九十两]+(?:天|周|个?礼拜|个?星期)",
    ),
    "not_received": (r"显示(?:已)?签收|签收了?[^，。！？]{0,6}没(?:收到|见到|拿到)|没见到|没拿到",),
    "refund_delay": (r"退款[^，。！？]{0,8}(?:没|未|还|不)|钱还没退|没退款|没到账",),
}


# Broader words, tried after the ones above (a kind's patterns run from the strongest).
_EN_BROADER: Mapping[str, tuple[str, ...]] = {
    "open_seam": (
        r"\bunravel\w*\b|\bhem\b[^.!?]{0,20}\b(?:came|coming|is|has)\b|\bcoming apart\b|\bfell apart\b",
    ),
    "color_mismatch": (
        rf"\b{_COLOUR_EN}\b,? not (?:the )?{_COLOUR_EN}\b",
        r"\bnot the (?:\w+ )?(?:shown|pictured)\b",
    ),
    "size_fit": (r"\bpinch\w*\b|\btoo (?:snug|baggy)\b|\bnarrow\b",),
    "not_working": (
        r"\bmakes? (?:a )?(?:\w+ )?noise\b|\b(?:then )?dies\b|\bdied\b|\bkeeps? (?:turning|switching) off\b",
        r"\bwon'?t (?:stay on|connect|pair|heat|boot)\b|\bno power\b",
        r"\bdoesn'?t (?:heat|cool|spin|connect|pair)\b",
    ),
    "missing_item": (
        r"\b(?:was|were|is|are)(?:n'?t| not) included\b|\bnot included\b|\bdidn'?t come with\b",
        r"\b(?:lid|part|piece|cable|manual|screws?|charger|remote|strap)\b[^.!?]{0,20}"
        r"\b(?:missing|not there)\b",
    ),
    "wrong_item": (
        r"\bsomeone else'?s\b|\bnot mine\b|\bisn'?t what i ordered\b|\bnone of (?:this|it) is mine\b",
    ),
    "tracking_stuck": (
        r"\bin transit\b[^.!?]{0,40}\b(?:days|weeks)\b",
        r"\bwithout (?:a single |any )?(?:scan|update)s?\b|\bno scans?\b",
    ),
    "late_delivery": (
        r"\b(?:meant|due|expected) to (?:come|arrive|be here)\b|\bshould have (?:come|arrived|been here)\b",
        r"\bstill waiting\b|\bnot (?:arrived|here) yet\b",
    ),
    "not_received": (
        r"\bleft (?:it )?with (?:a |my |the )?neighbou?r\b|\bnobody has it\b",
        r"\bnever (?:came|showed up)\b|\bstolen\b",
    ),
    "wrong_charge": (r"\bcharged (?:my card|me)\b|\bthe price was\b|\bshould (?:have )?(?:been|cost)\b",),
    "broken_item": (r"\bsnapped\b|\bdented\b(?! box)",),
    "stain": (r"\bdirty\b|\bgrubby\b|\bmould\w*\b|\bmold\w*\b",),
}
_ZH_BROADER: Mapping[str, tuple[str, ...]] = {
    "open_seam": (r"掉线|缝得|走线|线开|针脚",),
    "stain": (r"印记|痕迹|黄圈|一圈.{0,3}黄|发黄的?(?:印|渍|斑|圈|痕)|黑点|脏东西",),
    "size_fit": (r"短了|长了|紧了|松了|窄了|肥了|不合身|穿不上|穿不进",),
    "not_working": (
        r"不出(?:雾|水|风|声|热|气)|没用|不管用|不起作用|不能开机|不能充电|不制冷|不加热|自动关机|断电|打不开(?!页面|app)",
    ),
    "broken_item": (r"^(?!.*(?:裙|裤|衣|衫|袖|领|帽|袜|鞋|线)).*?(断了|摔碎|碎片|磕掉|缺口|裂纹|裂缝)",),
    "wrong_item": (r"寄来的是|来的是|不是我的|别人的|要的是[^，。！？]{0,10}(?:寄|发|来)",),
    "wrong_charge": (r"多了一笔|账单|没买的|乱扣|收费不对|扣了[^，。！？]{0,4}钱",),
    "tracking_stuck": (r"待揽收|没动|不动了|没有更新",),
    "missing_item": (r"没有收到[^，。！？]{0,4}(?:赠品|配件)|赠品[^，。！？]{0,6}没",),
}
_EN_BROADEST: Mapping[str, tuple[str, ...]] = {
    "stain": (r"\bstreaks?\b|\bblotch\w*\b|\bresidue\b|\bwon'?t (?:come|wash) out\b",),
    "color_mismatch": (
        r"\bin person\b|\b(?:was|is|looked|looks) \w+ in the (?:photos?|pictures?|listing)\b",
        r"\bdifferent colou?r from\b",
    ),
    "size_fit": (
        r"\b(?:huge|tiny|massive|enormous) on me\b|\b(?:way|much|far) too (?:big|small)\b|\bswims on me\b",
    ),
    "not_working": (
        r"\bonly (?:heats|works|charges|cools)\b|\bbroken down\b",
        r"\bnot (?:heating|cooling|charging|turning on)\b",
        r"\bwon'?t (?:work|go|power on)\b|\bdead\b",
    ),
    "damaged_parcel": (r"\bgash\w*\b|\bhole in the (?:box|carton|package|parcel)\b",),
    "missing_item": (
        r"\bonly (?:\w+ )?(?:were|was) (?:inside|in it|in the box)\b|\b(?:pack|set|box) of \w+ but\b",
        r"\bshort by\b|\bone (?:is|was) missing\b",
    ),
    "wrong_item": (
        r"\bordered (?:the |a |an )?\w+(?: \w+)? and (?:got|received) (?:the |a |an )?\w+\b",
        r"\breceived the wrong\b|\bgot the \w+ one\b",
    ),
    "wrong_charge": (
        r"\btwo payments\b|\bpaid twice\b|\bdouble payment\b|\bpayments? for (?:one|a single) order\b",
    ),
    "late_delivery": (
        r"\b(?:been )?waiting (?:\w+ )?(?:days|weeks|a week|a month)\b|\bhasn'?t (?:arrived|come)\b",
        r"\bnot arrived\b|\bover (?:a|two|three) weeks\b",
    ),
    "refund_delay": (r"\bno refund\b|\brefund (?:hasn'?t|has not|never)\b|\bmoney back\b",),
}
_ZH_BROADEST: Mapping[str, tuple[str, ...]] = {
    "not_working": (r"连不上|闪灯|不充电|不能连接|没声音|不响|黑屏|开不了",),
    "missing_item": (r"只有[一二三四五六七八九十两\d]+个|少一个|少了一|缺一个",),
    "wrong_item": (r"买的是[^，。！？]{0,8}收到|收到一[双件个条台]|发了一[双件个条台]",),
    "app_error": (r"网络错误|转圈|加载失败|提示错误|页面错误|无法打开",),
    "not_received": (r"驿站[^，。！？]{0,10}没有|快递柜[^，。！？]{0,10}没有|被人拿|找不到(?:快递|包裹)",),
    "tracking_stuck": (r"停在|中转站[^，。！？]{0,8}(?:不动|没动|停)",),
}
_EN = {kind: (*_EN.get(kind, ()), *_EN_BROADER.get(kind, ()), *_EN_BROADEST.get(kind, ())) for kind in KINDS}
_ZH = {kind: (*_ZH.get(kind, ()), *_ZH_BROADER.get(kind, ()), *_ZH_BROADEST.get(kind, ())) for kind in KINDS}


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# Words that point at the photo for the problem ("Check the tag. I ordered a large."): evidence for a
# kind, but the problem is stated only together with the photo's text.
_EN_POINTERS: Mapping[str, tuple[str, ...]] = {
    "wrong_item": (r"\bcheck the (?:tag|label)\b|\bi ordered an? (?:large|medium|small|xl|l|m|s)\b",),
    "app_error": (
        r"\bsame thing every time\b|\btried (?:\d+|two|three|several) times\b",
        r"\b(?:code|coupon|voucher|gift card)\b[^.!?]{0,40}\b(?:works?|work until|valid|yesterday)\b",
    ),
}
_ZH_POINTERS: Mapping[str, tuple[str, ...]] = {
    "wrong_item": (r"领标|吊牌|你看这个(?:码|尺码|标)",),
}


def _compile(table: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[re.Pattern[str], ...]]:
    # Patterns are lower-case and texts are lower-cased (ASCII only, so match offsets stay those of
    # the original text): much faster than re.IGNORECASE.
    return {kind: tuple(re.compile(p) for p in table.get(kind, ())) for kind in KINDS}


CUES: dict[str, dict[str, tuple[re.Pattern[str], ...]]] = {"en": _compile(_EN), "zh": _compile(_ZH)}
"""CUES[locale][kind]: the cue patterns, strongest first."""
POINTERS: dict[str, dict[str, tuple[re.Pattern[str], ...]]] = {
    "en": _compile(_EN_POINTERS),
    "zh": _compile(_ZH_POINTERS),
}
"""POINTERS[locale][kind]: words that point at the photo for a problem of that kind."""


def cue_matches(
    text: str, locale: str, table: Mapping[str, Mapping[str, tuple[re.Pattern[str], ...]]] = CUES
) -> dict[str, re.Match[str]]:
    """For each kind with a cue in ``text``: the first match of its strongest matching pattern.

    A pattern with a group marks its cue by that group (the rest is context it needs).

    Case is ignored; the match's offsets are those of ``text``, its group() that of the lower-cased text.
    ``table`` is CUES, or POINTERS for the words that point at the photo.
    """
    found: dict[str, re.Match[str]] = {}
    text = text.translate(_ASCII_LOWER)
    for kind, patterns in table["zh" if locale == "zh" else "en"].items():
        for pattern in patterns:
            m = pattern.search(text)
            if m is not None:
                found[kind] = m
                break
    return found
