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
from collections.abc import Mapping, Sequence
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
# Text that is not customer-service talk at all (news, recipes, code, verse, scams): with the spam
# above, the negatives of the bundled scorer's sentence head (``features.SentenceHead``).
UNRELATED_EN: tuple[str, ...] = (
    "Stocks rallied on Tuesday as investors cheered the central bank's decision.",
    "Tomorrow will be cloudy with a chance of showers in the afternoon.",
    "The home team scored twice in the final minutes to win the cup.",
    "Preheat the oven to 180 degrees and whisk the eggs with sugar.",
    "The Eiffel Tower was completed in 1889 for the World's Fair.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "def main(): print('hello world') if __name__ == '__main__'",
    "Vote for change this November, your voice matters.",
    "The quick brown fox jumps over the lazy dog.",
    "Earn up to 40% APY by staking your tokens on our platform.",
    "Buy followers and likes for your social media account today.",
    "Our astrologer reveals what the stars hold for you this week.",
    "Penguins huddle together to survive the Antarctic winter.",
    "Download the latest movies and TV shows free, no registration.",
    "Get your degree online in just two weeks, no exams.",
    "The senator announced a new bill on infrastructure spending.",
    "Add a pinch of salt and simmer the soup for twenty minutes.",
    "Bitcoin price prediction: experts expect a tenfold rise.",
    "This vintage guitar has a warm tone and a maple neck.",
    "Play the new fantasy game and collect rare dragons.",
    "Work from home and make money with just your phone.",
    "Dear friend, I am a prince and need your help to transfer funds.",
    "Your computer is infected, call this number immediately.",
    "Enlarge your muscles fast with our natural supplement.",
    "Cheap flights to Bali, book now before prices rise.",
    "Mars has two small moons called Phobos and Deimos.",
    "The orchestra will perform Beethoven's ninth symphony on Friday.",
    "Find your soulmate on the number one dating app.",
    "Invest in gold now, the dollar is about to collapse.",
    "Traffic is heavy on the ring road due to an accident.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "Lottery results: the jackpot rolls over to next week.",
    "Subscribe to my channel for daily prank videos.",
    "Hack any account in minutes with this secret tool.",
    "The museum's new exhibit features ancient Egyptian pottery.",
    "Our tarot readers are online now, first reading free.",
    "Rent luxury villas by the sea at unbeatable prices.",
    "Learn to speak French fluently in just seven days.",
    "A magnitude five earthquake shook the coastal city overnight.",
    "Roses are red, violets are blue, sugar is sweet.",
)
UNRELATED_ZH: tuple[str, ...] = (
    "今日股市大涨，投资者对央行降息表示欢迎。",
    "明天多云转小雨，午后有雷阵雨，请带好雨具。",
    "主队在最后几分钟连进两球，夺得冠军。",
    "将烤箱预热至180度，把鸡蛋和白糖打匀。",
    "埃菲尔铁塔于1889年为世界博览会而建成。",
    "床前明月光，疑是地上霜。",
    "代开各类发票，税点低，可验证。",
    "关注公众号，每天分享理财秘籍。",
    "出售二手房，南北通透，拎包入住。",
    "快速减肥茶，七天瘦一圈，无副作用。",
    "刷单兼职，日结工资，宝妈学生优先。",
    "网络赌球，高额返利，注册就送。",
    "专业代练游戏账号，段位包上。",
    "企鹅在南极的冬天挤在一起取暖。",
    "免费下载最新电影和电视剧，无需注册。",
    "两周拿本科文凭，无需考试，学信网可查。",
    "市政府宣布新的城市道路建设规划。",
    "加一点盐，小火慢炖二十分钟即可出锅。",
    "币圈大佬带你翻身，月入百万不是梦。",
    "这把吉他音色温暖，琴颈是枫木的。",
    "全新传奇手游，一刀999级，爆率超高。",
    "您的电脑已中毒，请立即拨打以下号码。",
    "特价机票飞三亚，手慢无。",
    "火星有两颗小卫星，分别叫火卫一和火卫二。",
    "交响乐团本周五将演奏贝多芬第九交响曲。",
    "同城交友，寂寞的你不再孤单。",
    "黄金即将暴涨，现在买入稳赚。",
    "环城路发生交通事故，车辆排起长龙。",
    "光合作用把阳光、水和二氧化碳转化成糖。",
    "彩票开奖结果公布，头奖累积到下期。",
    "关注我的频道，每天更新搞笑视频。",
    "破解任何账号密码，几分钟搞定。",
    "博物馆新展出了一批古埃及陶器。",
    "塔罗牌占卜，首次免费，在线解答。",
    "海边豪华别墅出租，价格优惠。",
    "七天学会流利英语，包教包会。",
    "沿海城市昨夜发生五级地震。",
    "春眠不觉晓，处处闻啼鸟。",
    "私人侦探，婚外调查，保密可靠。",
    "信用卡套现，秒到账，手续费低。",
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
    cases: Sequence[Source],
    seed: int = 7,
    swaps_per_question: int = 8,
    pools: Pools = Pools(),
    group: Mapping[str, int] | None = None,
) -> list[Generated]:
    """Every generated negative for ``cases`` (deterministic for a seed).

    ``group`` (question id -> cross-validation fold): a question's replies from other questions are
    taken only from questions of its own fold, so no reply text crosses folds."""
    rng = random.Random(seed)
    questions: dict[str, Source] = {}
    for c in cases:
        questions.setdefault(c.qid, c)
    all_good = [c for c in cases if c.grade == 2]
    out: list[Generated] = []
    for qid, q in sorted(questions.items()):
        good = [g for g in all_good if group is None or group[g.qid] == group[qid]]
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
