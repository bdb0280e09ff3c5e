"""Real residents' appeals for development and tests: New York 311 requests moved to the district.

``tests/data/appeals/nyc311_sample_1000.csv`` holds 1,000 real NYC 311 requests (NYC Open Data;
NOTICE). This module reads them and makes appeals citywatch can take:

- **Category.** The complaint type and descriptor map to a citywatch category (``category_of``):
  street flooding, a sewer backing up onto the street or standing water -> waterlogging; a
  traffic signal out, congestion or a double-parked vehicle blocking traffic -> traffic; the rest
  (noise, parking, heat, rubbish...) -> other. None maps to falling_object (NYC has no such type).
- **Place.** New York is about 43 km across, the district's largest square inside its boundary
  5.5 km (SW corner ``TILE_ORIGIN``): the city is cut into 5.5 km tiles and every tile laid onto
  that square (``shift``). Distances within a tile are kept exactly (equirectangular metres);
  requests from different tiles fall on top of each other, which makes the district denser than
  New York (harder, not easier, for matching).
- **Words.** The request carries no free text: its English text is "type: descriptor". For
  paraphrased English and for Chinese, each kind of problem has a few phrasings (``PHRASES``),
  one picked per request by its key, so that two appeals about the same problem rarely read the
  same, as on a real hotline.
- **Time.** Kept as it was (local New York time taken as the district's local time) or moved to a
  given day, time of day kept (``on_day``).
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

from geo.crs import lonlat_to_utm, utm_to_lonlat

REPO: Final = Path(__file__).resolve().parents[1]
SAMPLE: Final = REPO / "tests" / "data" / "appeals" / "nyc311_sample_1000.csv"
NYC_TZ: Final = ZoneInfo("America/New_York")
DISTRICT_TZ: Final = ZoneInfo("Asia/Shanghai")
TILE_M: Final = 5500.0
TILE_ORIGIN: Final = (120.5730103, 31.29269433)  # SW corner of the square inside Gusu
NYC_ORIGIN: Final = (-74.26, 40.49)  # SW of the five boroughs: tile (0, 0) starts here


@dataclass(frozen=True, slots=True)
class Request:
    """One NYC 311 request, as read."""

    key: str
    created: datetime  # local time (New York), aware
    closed: datetime | None
    type: str
    descriptor: str
    status: str
    resolution: str
    address: str
    lon: float | None
    lat: float | None
    channel: str


def _time(text: str) -> datetime | None:
    text = text.strip()
    if not text:
        return None
    return datetime.strptime(text, "%m/%d/%Y %I:%M:%S %p").replace(tzinfo=NYC_TZ)


def read(path: Path = SAMPLE) -> list[Request]:
    """The requests of a NYC 311 export (the sample's columns), in file order."""
    out: list[Request] = []
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            created = _time(row["Created Date"])
            if created is None:
                continue
            lat, lon = row.get("Latitude", "").strip(), row.get("Longitude", "").strip()
            out.append(Request(
                key=row["Unique Key"].strip(), created=created, closed=_time(row["Closed Date"]),
                type=row["Complaint Type"].strip(), descriptor=row["Descriptor"].strip(),
                status=row["Status"].strip(), resolution=row["Resolution Description"].strip(),
                address=row["Incident Address"].strip(),
                lon=float(lon) if lon else None, lat=float(lat) if lat else None,
                channel=row.get("Open Data Channel Type", "").strip()))
    return out


def nyc_metres(a: Request, b: Request) -> float:
    """Distance in New York (equirectangular; inf without positions)."""
    if a.lon is None or a.lat is None or b.lon is None or b.lat is None:
        return math.inf
    dx = (a.lon - b.lon) * 111_320 * math.cos(math.radians(40.7))
    dy = (a.lat - b.lat) * 110_540
    return math.hypot(dx, dy)


def shift(r: Request, phase: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float] | None:
    """Where the request lands in the district: its offset within its 5.5 km tile of New York,
    from the district square's SW corner (``phase`` moves the tile grid)."""
    if r.lon is None or r.lat is None:
        return None
    x = (r.lon - NYC_ORIGIN[0]) * 111_320 * math.cos(math.radians(40.7)) + phase[0]
    y = (r.lat - NYC_ORIGIN[1]) * 110_540 + phase[1]
    ox, oy = lonlat_to_utm(*TILE_ORIGIN)
    lon, lat = utm_to_lonlat(float(ox) + x % TILE_M, float(oy) + y % TILE_M)
    return round(float(lon), 6), round(float(lat), 6)


def same_tile(a: Request, b: Request, phase: tuple[float, float] = (0.0, 0.0)) -> bool:
    def tile(r: Request) -> tuple[int, int]:
        assert r.lon is not None
        assert r.lat is not None
        x = (r.lon - NYC_ORIGIN[0]) * 111_320 * math.cos(math.radians(40.7)) + phase[0]
        y = (r.lat - NYC_ORIGIN[1]) * 110_540 + phase[1]
        return int(x // TILE_M), int(y // TILE_M)
    return tile(a) == tile(b)


# (complaint type, descriptor word) -> category; the first match wins, "*" any descriptor.
_CATEGORIES: Final[tuple[tuple[str, str, str], ...]] = (
    ("Sewer", "Street Flooding", "waterlogging"),
    ("Sewer", "Sewer Backup", "waterlogging"),
    ("Sewer", "Manhole Overflow", "waterlogging"),
    ("Standing Water", "*", "waterlogging"),
    ("Street Flooding", "*", "waterlogging"),
    ("Traffic Signal Condition", "*", "traffic"),
    ("Traffic", "Congestion", "traffic"),
    ("Illegal Parking", "Blocking Traffic", "traffic"),
)


def category_of(r: Request) -> str:
    for t, d, cat in _CATEGORIES:
        if r.type == t and (d == "*" or d.lower() in r.descriptor.lower()):
            return cat
    return "other"


# Kind of problem -> (English paraphrases, Chinese phrasings). Matched on "type descriptor".
_FAMILIES: Final[tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...]] = (
    (("noise", "music", "party", "television"),
     ("loud music from a party next door", "neighbours playing music very loud",
      "party noise keeping us awake"),
     ("楼上邻居放音乐太吵", "隔壁开派对，噪音扰民", "晚上音乐声很大，影响休息")),
    (("banging", "pounding"),
     ("banging and pounding from the flat above", "constant pounding noise upstairs",
      "someone keeps banging on the walls"),
     ("楼上一直有敲打声", "邻居家咚咚响，太吵了", "楼上砸东西的声音扰民")),
    (("loud talking",),
     ("people talking loudly outside", "shouting in the street at night",
      "loud voices outside the building"),
     ("楼下有人大声喧哗", "晚上门口一群人说话很吵", "街上有人大声说话扰民")),
    (("construction",),
     ("construction noise out of hours", "building work making noise early in the morning",
      "noisy construction equipment"),
     ("工地夜间施工噪音", "装修施工太吵", "施工机械噪声扰民")),
    (("barking", "dog"),
     ("a dog barking all day", "neighbour's dog keeps barking", "barking dog noise"),
     ("邻居家的狗一直叫", "狗叫声扰民", "小区里狗叫不停")),
    (("car/truck", "horn", "idling", "noise - vehicle", "ice cream"),
     ("vehicles making noise in the street", "car horns and engines running",
      "a truck idling with its engine on"),
     ("路边车辆鸣笛噪音", "车子一直怠速，很吵", "汽车喇叭声扰民")),
    (("blocked hydrant",),
     ("a car parked in front of the fire hydrant", "hydrant blocked by a parked vehicle",
      "someone parked at the hydrant"),
     ("有车停在消防栓前面", "消防栓被违停车辆挡住", "车辆违停占用消防栓")),
    (("blocked driveway", "no access", "partial access"),
     ("a car is blocking my driveway", "cannot get out, driveway blocked",
      "vehicle parked across the garage entrance"),
     ("有车堵住了我家车库出入口", "门口被车挡住出不去", "违停车辆堵住小区大门")),
    (("double parked",),
     ("double parked car blocking the lane", "vehicles double parked on the street",
      "a van double parked, traffic cannot pass"),
     ("车辆并排违停，堵住车道", "路上有车双排停车", "货车乱停堵塞交通")),
    (("parking", "sidewalk", "bike lane", "bus layover", "trailer"),
     ("illegal parking on the street", "cars parked where parking is not allowed",
      "vehicle parked on the pavement"),
     ("路边有车违停", "车辆乱停乱放", "人行道上违章停车")),
    (("street light", "lamp", "luminaire", "lamppost", "lighting"),
     ("the street light is out", "lamp post not working, street dark at night",
      "street lights broken"),
     ("路灯不亮了", "这条街路灯坏了，晚上很黑", "灯杆上的路灯灭了")),
    (("pothole", "cave-in", "rough", "street repair", "plate", "hardware", "sidewalk condition",
      "broken sidewalk", "curb"),
     ("a big pothole in the road", "road surface broken", "the street has a hole in it"),
     ("路面有个大坑", "马路破损塌陷", "道路坑洼不平")),
    (("heat", "hot water"),
     ("no heating in the apartment", "no hot water in the building", "radiators are cold"),
     ("家里没有暖气", "楼里没有热水", "暖气不热")),
    (("pests", "rodent", "mice", "rat", "roach"),
     ("rats and mice in the building", "pests in the apartment", "cockroaches everywhere"),
     ("楼里有老鼠", "家里蟑螂很多", "小区老鼠成灾")),
    (("mold",),
     ("mould on the walls", "damp and mold in the flat", "black mold in the bathroom"),
     ("墙上发霉", "家里潮湿发霉", "卫生间长霉菌")),
    (("leak", "drip", "damp spot", "heavy flow"),
     ("water leaking from the ceiling", "a leak in the flat", "water dripping through"),
     ("天花板漏水", "家里渗水", "楼上漏水到我家")),
    (("street flooding", "standing water", "puddle"),
     ("the street is flooded", "standing water on the road", "water over the road"),
     ("马路上积水很深", "路面积水，车过不去", "街上被水淹了")),
    (("sewer backup", "manhole overflow", "catch basin", "sewer"),
     ("sewer backing up into the street", "water coming out of the manhole",
      "drain blocked, water overflowing"),
     ("下水道返水冒到路上", "窨井冒水", "排水堵塞，污水外溢")),
    (("hydrant running", "hydrant leaking", "hydrant defective", "hydrant"),
     ("fire hydrant running onto the street", "water gushing from the hydrant",
      "broken hydrant leaking"),
     ("消防栓一直在冒水", "消火栓漏水流到路上", "消防栓坏了在漏水")),
    (("bulky", "collection", "recycling", "missed", "dump", "litter", "sanitation", "dirty"),
     ("rubbish not collected", "bulky items left for collection", "garbage piling up"),
     ("垃圾没有人清运", "大件垃圾堆在路边", "垃圾堆积很久了")),
    (("derelict", "abandoned"),
     ("an abandoned car on the street", "derelict vehicle left for weeks",
      "car abandoned without plates"),
     ("路边有辆僵尸车", "废弃车辆长期停放", "一辆车弃置很久没人管")),
    (("traffic signal", "controller", "signal", "ped lamp"),
     ("the traffic light is not working", "signals out at the junction",
      "traffic lights stuck on red"),
     ("路口红绿灯坏了", "信号灯不亮", "交通灯一直是红灯")),
    (("congestion", "gridlock", "speeding", "stoplight violation"),
     ("traffic jam at the junction", "gridlock in the street", "cars stuck in traffic"),
     ("路口严重堵车", "交通拥堵走不动", "车流排长队")),
    (("graffiti",),
     ("graffiti on the wall", "walls covered in graffiti", "someone sprayed graffiti"),
     ("墙上被乱涂乱画", "外墙有涂鸦", "有人在墙上涂鸦")),
    (("tree", "branch", "limb"),
     ("a tree branch has fallen", "a damaged tree may fall", "fallen tree on the pavement"),
     ("树枝断了掉下来", "大树倒伏", "树木有倒下的危险")),
    (("paint", "plaster", "wall", "ceiling"),
     ("paint and plaster peeling", "the ceiling is crumbling", "walls need repair"),
     ("墙皮脱落", "天花板掉灰", "墙壁需要维修")),
    (("door", "window"),
     ("the door is broken", "window frame broken", "front door does not lock"),
     ("门坏了", "窗户框坏了", "单元门锁不上")),
    (("electric", "wiring", "outlet", "power"),
     ("electrical problem in the building", "outlets not working", "power keeps going off"),
     ("楼里电线有问题", "插座没电", "经常停电")),
    (("plumbing", "toilet", "sink", "pipe", "water supply", "no water", "dirty water"),
     ("plumbing broken", "no water coming from the tap", "pipes broken"),
     ("水管坏了", "家里没有水", "自来水很脏")),
    (("gas",),
     ("smell of cooking gas", "gas problem in the building", "gas supply cut"),
     ("闻到煤气味", "燃气有问题", "燃气停了")),
)
_FALLBACK_ZH: Final = ("市民反映{t}问题", "关于{t}的投诉", "反映{t}，请处理")


def _family(r: Request) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    text = f"{r.type} {r.descriptor}".lower()
    for words, en, zh in _FAMILIES:
        if any(w in text for w in words):
            return en, zh
    return None


def _pick(key: str, options: Sequence[str], salt: str) -> str:
    h = int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest(), 16)
    return options[h % len(options)]


def english(r: Request) -> str:
    """The request's own words: "type: descriptor"."""
    return f"{r.type}: {r.descriptor}" if r.descriptor else r.type


def paraphrase(r: Request) -> str:
    """An English appeal about the same problem in a resident's words (one of a few)."""
    fam = _family(r)
    return _pick(r.key, fam[0], "en") if fam else english(r)


def chinese(r: Request) -> str:
    """A Chinese appeal about the same problem (one of a few phrasings)."""
    fam = _family(r)
    if fam is not None:
        return _pick(r.key, fam[1], "zh")
    return _pick(r.key, _FALLBACK_ZH, "zh").format(t=r.type)


@dataclass(frozen=True, slots=True)
class Appeal:
    """A request as an appeal in the district."""

    key: str
    received: datetime  # aware
    category: str
    position: tuple[float, float]
    text: str
    caller: str  # a stand-in for the caller: nothing in the data tells callers apart
    request: Request


def appeals(requests: Iterable[Request], language: str = "en",
            phase: tuple[float, float] = (0.0, 0.0)) -> list[Appeal]:
    """Appeals from requests with a position; ``language``: en (as recorded), para (English
    paraphrases), zh (Chinese), mixed (every other one Chinese)."""
    out: list[Appeal] = []
    for i, r in enumerate(requests):
        pos = shift(r, phase)
        if pos is None:
            continue
        if language == "zh" or (language == "mixed" and i % 2):
            text = chinese(r)
        elif language == "para":
            text = paraphrase(r)
        else:
            text = english(r)
        out.append(Appeal(r.key, r.created.replace(tzinfo=DISTRICT_TZ), category_of(r), pos,
                          text, f"caller-{r.key}", r))
    return out


def on_day(items: Sequence[Appeal], day: date) -> list[Appeal]:
    """The appeals moved to ``day`` (district time), each keeping its time of day."""
    out = []
    for a in items:
        t = a.received
        moved = datetime.combine(day, t.timetz())
        out.append(replace(a, received=moved))
    return out


def busiest_day(requests: Sequence[Request]) -> date:
    days: Mapping[date, int] = {}
    counts: dict[date, int] = dict(days)
    for r in requests:
        counts[r.created.date()] = counts.get(r.created.date(), 0) + 1
    return max(counts, key=lambda d: (counts[d], d))


def within(items: Sequence[Appeal], start: datetime, span: timedelta) -> list[Appeal]:
    return [a for a in items if start <= a.received < start + span]
