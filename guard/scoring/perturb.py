"""Generated negatives: replies the guard must never send, made from labelled cases.

Two families, both labelled grade 0:

- **relations**: a good (grade-2) reply paired with the question of a different issue (a specific reply
  to a different problem), and a good reply in the other language;
- **perturbations** of one case: an off-topic reply repeated, padded with filler or invisible
  characters, a good reply with spam appended or buried under filler, its remedy turned into a
  refusal, the question's keywords listed back.

Pure and deterministic (a seeded ``random.Random``); used to train the bundled scorer
(``fit_bundled``) and to measure any scorer (``guard eval``). The text pools are parameters so that
tests can use different filler and spam than the training.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from guard.scoring.features import content_tokens, text_lang

SPAM_EN: tuple[str, ...] = (
    "WIN BIG at Lucky Star Casino tonight!",
    "Claim your 200 free spins now, no deposit needed.",
    "Hot singles in your area are waiting to chat.",
    "Buy cheap watches and designer bags at 90% off.",
    "Click here to double your bitcoin in 24 hours.",
    "Limited offer: earn $5,000 a week working from home.",
    "Visit our partner site for exclusive crypto giveaways.",
    "Best online slots and poker, instant withdrawals.",
    "Lose 10 kg in a week with this one weird trick.",
    "Get a free iPhone by completing a short survey.",
    "Royal Flush Casino pays out every hour, join now.",
    "Refinance your mortgage today at the lowest rates ever.",
    "Congratulations, you won a $500 voucher, claim it today.",
    "Sports betting tips with 99% accuracy, subscribe now.",
    "Miracle cream removes wrinkles overnight.",
    "Download our partner app and get $20 bonus cash.",
    "Exclusive replica sneakers shipped worldwide.",
    "Your account has been selected for a cash prize.",
)
SPAM_ZH: tuple[str, ...] = (
    "幸运星娱乐城今晚开奖，注册即送888元彩金！",
    "免费领取200次旋转，无需充值。",
    "高价回收各类礼品卡，加微信详聊。",
    "名表名包一折起，限时抢购。",
    "比特币24小时翻倍，点击链接立即参与。",
    "在家兼职日赚五百，轻松上手。",
    "正规网投平台，秒到账，欢迎体验。",
    "一周瘦十斤，无效退款。",
    "扫码领取免费手机，仅限今天。",
    "代办各类证件，加急办理。",
    "皇家赌场每小时派奖，马上加入。",
    "低息贷款当天到账，无需抵押。",
    "恭喜您中奖500元代金券，今天领取。",
    "足球推荐准确率99%，订阅即送。",
    "神奇面霜一夜去皱纹。",
    "下载合作App立得20元现金红包。",
    "高仿球鞋全国包邮。",
    "您的账号已被选中领取现金大奖。",
)
FILLER_EN: tuple[str, ...] = (
    "Thank you for being a valued member of our community.",
    "We truly appreciate every customer who shops with us.",
    "Our company was founded with a passion for quality and service.",
    "We believe that great products make everyday life better.",
    "Our team works hard every day to bring you the best experience.",
    "Customer satisfaction has always been at the heart of what we do.",
    "We are constantly improving our store and our selection.",
    "Have a wonderful day and thank you again for choosing us.",
    "We hope you enjoy browsing our latest collections.",
    "Your feedback helps us grow and serve you better.",
    "Our warehouse team takes pride in every order.",
    "Stay tuned for more updates from our store.",
    "Every season brings new styles and fresh ideas.",
    "Our founders started this shop in a small garage.",
    "We are grateful for the trust you place in us.",
    "Shopping should always be fun and easy.",
)
FILLER_ZH: tuple[str, ...] = (
    "感谢您一直以来对本店的支持与厚爱。",
    "我们始终坚持品质第一、服务至上的理念。",
    "本店成立多年，深受广大顾客的信赖。",
    "我们的团队每天都在努力为您提供更好的体验。",
    "顾客满意是我们永远的追求。",
    "我们会不断优化商品和服务。",
    "祝您生活愉快，万事如意。",
    "欢迎您常来逛逛我们的新品。",
    "您的每一条反馈都是我们前进的动力。",
    "仓库的同事们认真对待每一个订单。",
    "更多优惠活动敬请关注。",
    "再次感谢您选择我们。",
    "每个季节我们都会带来新的款式。",
    "我们的创始人从一个小车库起步。",
    "感恩您对我们的信任。",
    "购物本该轻松愉快。",
)
REFUSAL_EN: tuple[str, ...] = (
    "However, we will not repair or replace it and there are no refunds.",
    "Unfortunately this is normal and not a defect, so we cannot offer a refund or replacement.",
    "We are not responsible for this and cannot accept a return.",
)
REFUSAL_ZH: tuple[str, ...] = (
    "但是这种情况属于正常现象，不是质量问题，不能退换。",
    "不过这个我们不负责，不予退款也不补发。",
    "抱歉，这种情况无法给您退换，也没有补偿。",
)
INVISIBLE: tuple[str, ...] = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad")


@dataclass(frozen=True, slots=True)
class Source:
    """A labelled case as the generators need it."""

    id: str
    qid: str
    lang: str
    issue: str
    question: str
    reply: str
    grade: int
    image: str | None = None


@dataclass(frozen=True, slots=True)
class Generated:
    """A generated negative (grade 0), in the fold of the question it is paired with."""

    id: str
    qid: str
    lang: str
    kind: str
    question: str
    reply: str
    image: str | None = None


@dataclass(frozen=True, slots=True)
class Pools:
    spam_en: tuple[str, ...] = SPAM_EN
    spam_zh: tuple[str, ...] = SPAM_ZH
    filler_en: tuple[str, ...] = FILLER_EN
    filler_zh: tuple[str, ...] = FILLER_ZH
    refusal_en: tuple[str, ...] = REFUSAL_EN
    refusal_zh: tuple[str, ...] = REFUSAL_ZH


def repeat(reply: str, times: int) -> str:
    return " ".join([reply] * times)


def pad_invisible(reply: str, rng: random.Random, n: int = 2000) -> str:
    """``n`` zero-width and format characters strewn through the reply and after it."""
    chars = list(reply)
    for _ in range(n // 2):
        chars.insert(rng.randrange(len(chars) + 1), rng.choice(INVISIBLE))
    return "".join(chars) + "".join(rng.choice(INVISIBLE) for _ in range(n - n // 2))


def fill(pool: Sequence[str], chars: int, rng: random.Random) -> str:
    """About ``chars`` characters of text drawn from ``pool`` (sentences shuffled, repeated as needed)."""
    out: list[str] = []
    total = 0
    while total < chars:
        order = list(pool)
        rng.shuffle(order)
        for s in order:
            out.append(s)
            total += len(s) + 1
            if total >= chars:
                break
    return " ".join(out)


def join(lang: str, parts: Sequence[str]) -> str:
    return ("" if lang == "zh" else " ").join(p for p in parts if p)


def first_sentence(reply: str) -> str:
    for end in ("。", "！", "!", ". ", "？", "?"):
        if end in reply:
            return reply[: reply.index(end) + len(end)].strip()
    return reply


def keyword_list(question: str, lang: str, rng: random.Random) -> str:
    """The question's content words listed back ("seam, pocket, open, repair — we care!")."""
    toks = sorted(t for t in content_tokens(question) if not t.isdigit())
    rng.shuffle(toks)
    toks = toks[:6] or [question[:8]]
    if lang == "zh":
        return "、".join(toks) + rng.choice(("——这些问题我们都非常重视！", "，我们一直高度关注。", "！"))
    return ", ".join(toks) + rng.choice((" — we care!", ": we take all of these very seriously!", "!"))


def perturbations(case: Source, rng: random.Random, pools: Pools = Pools()) -> list[tuple[str, str]]:
    """(kind, reply) perturbations of one case that must never be sent."""
    zh = case.lang == "zh"
    spam = pools.spam_zh if zh else pools.spam_en
    filler = pools.filler_zh if zh else pools.filler_en
    refusal = pools.refusal_zh if zh else pools.refusal_en
    out: list[tuple[str, str]] = []
    if case.grade == 0:
        out.append(("repeat_offtopic", repeat(case.reply, rng.randint(2, 50))))
        out.append(("invisible_offtopic", pad_invisible(case.reply, rng)))
        out.append(
            ("filler_offtopic", join(case.lang, [case.reply, fill(filler, rng.randint(300, 3000), rng)]))
        )
    if case.grade == 1:
        out.append(("spam_appended", join(case.lang, [case.reply, fill(spam, rng.randint(400, 6000), rng)])))
    if case.grade == 2:
        out.append(("spam_appended", join(case.lang, [case.reply, fill(spam, rng.randint(400, 6000), rng)])))
        out.append(
            ("filler_buried", join(case.lang, [fill(filler, rng.randint(1500, 8000), rng), case.reply]))
        )
        out.append(("refusal", join(case.lang, [first_sentence(case.reply), rng.choice(refusal)])))
    return out


def generate(
    cases: Sequence[Source], seed: int = 7, swaps_per_question: int = 8, pools: Pools = Pools()
) -> list[Generated]:
    """Every generated negative for ``cases`` (deterministic for a seed)."""
    rng = random.Random(seed)
    questions: dict[str, Source] = {}
    for c in cases:
        questions.setdefault(c.qid, c)
    good = [c for c in cases if c.grade == 2]
    out: list[Generated] = []
    for qid, q in sorted(questions.items()):
        others = [g for g in good if g.issue != q.issue and g.lang == q.lang]
        for k, g in enumerate(rng.sample(others, min(swaps_per_question, len(others)))):
            out.append(
                Generated(f"gen-{qid}-swap{k}", qid, q.lang, "other_issue", q.question, g.reply, q.image)
            )
        foreign = [g for g in good if g.lang != q.lang and text_lang(g.reply) != q.lang]
        same_issue = [g for g in foreign if g.issue == q.issue] or foreign
        for k, g in enumerate(rng.sample(same_issue, min(2, len(same_issue)))):
            out.append(
                Generated(f"gen-{qid}-lang{k}", qid, q.lang, "other_language", q.question, g.reply, q.image)
            )
        listed = keyword_list(q.question, q.lang, rng)
        out.append(Generated(f"gen-{qid}-keywords", qid, q.lang, "keyword_list", q.question, listed, q.image))
    for c in cases:
        for k, (kind, reply) in enumerate(perturbations(c, rng, pools)):
            out.append(Generated(f"gen-{c.id}-{kind}{k}", c.qid, c.lang, kind, c.question, reply, c.image))
    return out
