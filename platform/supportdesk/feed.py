"""The support desk's synthetic feed: an online shop's tickets, orders and outcomes, deterministic per seed.

A fixed customer population carries latent traits (how demanding a customer is, how much they
buy, how often they refund). Orders and tickets are drawn from those traits with weekly
seasonality, so a customer's history predicts escalation without leaking it: escalation
depends on the ticket's topic and tone, the customer's trait and tenure, the channel, and noise.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

import numpy as np
import pandas as pd

from supportdesk import text
from supportdesk.contracts import CHANNELS, CURRENCIES

POPULATION_START = date(2024, 1, 1)
ORDER_WEEKDAY_FACTOR = (1.05, 0.95, 0.9, 0.95, 1.05, 1.3, 1.2)  # Monday .. Sunday
TICKET_WEEKDAY_FACTOR = (1.35, 1.1, 1.0, 0.95, 0.95, 0.8, 0.85)
CHANNEL_ESCALATION = {"email": 0.0, "chat": -0.3, "phone": 0.5, "web_form": 0.1}
OUTCOME_MAX_LAG_DAYS = 3


class DriftSpecError(ValueError):
    """A --drift value names an unknown aspect or has a bad value."""


@dataclass(frozen=True)
class DriftSpec:
    """Named shifts of the feed: a new topic, order amounts, channel mix, escalation rate."""

    new_topic: bool = False
    amount_scale: float = 1.0
    channel: str | None = None
    escalation_shift: float = 0.0

    ASPECTS = {
        "topic": "a new ticket topic appears (subscription fees)",
        "amounts=F": "order amounts are multiplied by F (e.g. amounts=1.8)",
        "channel=NAME": f"half the tickets move to channel NAME ({', '.join(CHANNELS)})",
        "escalation=X": "escalation log-odds shift by X (e.g. escalation=1.0)",
    }

    @classmethod
    def parse(cls, spec: str | None) -> DriftSpec:
        """Parse 'topic,amounts=1.8,channel=chat,escalation=1.0'."""
        if not spec:
            return cls()
        values: dict[str, object] = {}
        for item in (s.strip() for s in spec.split(",") if s.strip()):
            name, _, value = item.partition("=")
            try:
                if name == "topic" and not value:
                    values["new_topic"] = True
                elif name == "amounts" and value:
                    values["amount_scale"] = float(value)
                    if values["amount_scale"] <= 0:  # type: ignore[operator]
                        raise ValueError
                elif name == "channel" and value in CHANNELS:
                    values["channel"] = value
                elif name == "escalation" and value:
                    values["escalation_shift"] = float(value)
                else:
                    raise ValueError
            except ValueError:
                known = "; ".join(f"{k}: {v}" for k, v in cls.ASPECTS.items())
                raise DriftSpecError(f"bad drift aspect {item!r}; known aspects: {known}") from None
        return cls(**values)  # type: ignore[arg-type]

    @property
    def active(self) -> bool:
        return self != DriftSpec()


@dataclass(frozen=True)
class Population:
    """The shop's customers and their latent traits."""

    customer_id: np.ndarray
    signup: np.ndarray  # days since POPULATION_START
    demanding: np.ndarray  # latent z: drives refunds, tickets, tone and escalation
    activity: np.ndarray
    spend: np.ndarray
    currency: np.ndarray
    preferred_channel: np.ndarray

    @classmethod
    def create(cls, seed: int, size: int) -> Population:
        rng = np.random.default_rng([seed, 1])
        z = rng.normal(size=size)
        return cls(
            customer_id=np.array([f"C{i:06d}" for i in range(size)]),
            # Most customers joined over two years; a steady stream keeps joining.
            signup=rng.integers(0, 1000, size=size),
            demanding=z,
            activity=rng.lognormal(0.0, 0.8, size=size),
            spend=rng.lognormal(3.8, 0.6, size=size),
            currency=rng.choice(np.array(CURRENCIES), size=size, p=[0.6, 0.2, 0.2]),
            preferred_channel=rng.choice(np.array(CHANNELS), size=size, p=[0.4, 0.3, 0.15, 0.15]),
        )

    def active_on(self, day: date) -> np.ndarray:
        return np.flatnonzero(self.signup <= (day - POPULATION_START).days)


def _rng(seed: int, day: date, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, day.toordinal(), zlib.crc32(stream.encode())])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _times(day: date, n: int, rng: np.random.Generator) -> np.ndarray:
    # Busier afternoons and evenings than nights.
    hours = np.clip(rng.normal(15.0, 4.5, size=n), 0, 23.999)
    seconds = (hours * 3600).astype(np.int64)
    start = np.datetime64(datetime.combine(day, time()), "s")
    return start + seconds.astype("timedelta64[s]")


def _format_ts(values: np.ndarray) -> list[str]:
    return [str(v).replace("T", " ") for v in values.astype("datetime64[s]")]


def orders_for(day: date, population: Population, tickets_per_day: int, seed: int, drift: DriftSpec) -> pd.DataFrame:
    """The orders placed on one day."""
    rng = _rng(seed, day, "orders")
    active = population.active_on(day)
    n = int(rng.poisson(3 * tickets_per_day * ORDER_WEEKDAY_FACTOR[day.weekday()]))
    weights = population.activity[active] / population.activity[active].sum()
    who = rng.choice(active, size=n, p=weights)
    z = population.demanding[who]
    amount = rng.lognormal(np.log(population.spend[who]), 0.5) * drift.amount_scale
    # Demanding customers refund more, and so do pricey orders, the more above the customer's usual spend:
    # the customer's history (refund rate, mean amount) and the order's amount predict a refund; nothing leaks it.
    unusual = np.log(amount / (population.spend[who] * drift.amount_scale))
    pricey = np.log(amount / drift.amount_scale) - 3.8
    refunded = rng.random(n) < _sigmoid(-2.6 + 0.9 * z + 1.2 * unusual + 0.8 * pricey)
    cancelled = (~refunded) & (rng.random(n) < 0.04)
    status = np.where(refunded, "refunded", np.where(cancelled, "cancelled", "completed"))
    order = np.argsort(_times(day, n, rng))
    ts = _times(day, n, rng)[order]
    return pd.DataFrame({
        "order_id": [f"O{day:%Y%m%d}{i:06d}" for i in range(n)],
        "customer_id": population.customer_id[who],
        "ordered_at": _format_ts(ts),
        "amount": [f"{a:.2f}" for a in amount],
        "currency": population.currency[who],
        "status": status,
    })


@dataclass(frozen=True)
class TicketDay:
    """The tickets opened on one day and their (later) outcomes."""

    tickets: pd.DataFrame
    escalated: np.ndarray
    resolved_at: np.ndarray


def tickets_for(day: date, population: Population, tickets_per_day: int, seed: int, drift: DriftSpec) -> TicketDay:
    """The tickets opened on one day, with the outcome each will have."""
    rng = _rng(seed, day, "tickets")
    active = population.active_on(day)
    n = int(rng.poisson(tickets_per_day * TICKET_WEEKDAY_FACTOR[day.weekday()]))
    z_all = population.demanding[active]
    weights = np.exp(0.6 * z_all) * np.sqrt(population.activity[active])
    who = rng.choice(active, size=n, p=weights / weights.sum())
    z = population.demanding[who]
    tenure_days = (day - POPULATION_START).days - population.signup[who]

    topics = list(text.TOPICS.items())
    if drift.new_topic:
        name, weight, subjects, bodies = text.DRIFT_TOPIC
        topics.append((name, (weight, subjects, bodies)))
    # Demanding customers write more about money; everyone asks product questions.
    base = np.array([0.12, 0.1, 0.07, 0.12, 0.05, 0.08, 0.16, 0.1, 0.1, 0.1] + ([0.25] if drift.new_topic else []))
    money = np.array([0, 0, 0, 1, 1, 0, -1, 0, 0, 0] + ([1] if drift.new_topic else []), dtype=float)

    tone_logits = np.stack([-0.8 * z, np.zeros(n), 0.6 * z, 1.0 * z - 1.0], axis=1)
    tone_p = np.exp(tone_logits) / np.exp(tone_logits).sum(axis=1, keepdims=True)

    channel = population.preferred_channel[who].copy()
    switch = rng.random(n) < 0.3
    channel[switch] = rng.choice(np.array(CHANNELS), size=int(switch.sum()))
    if drift.channel:
        channel[rng.random(n) < 0.5] = drift.channel

    times = np.sort(_times(day, n, rng))
    rows, logits = [], np.empty(n)
    for i in range(n):
        p = base * np.exp(0.5 * money * z[i])
        t = int(rng.choice(len(topics), p=p / p.sum()))
        _, (topic_weight, subjects, bodies) = topics[t]
        tone = text.TONE_NAMES[int(rng.choice(4, p=tone_p[i]))]
        product = str(rng.choice(text.PRODUCTS))
        order_ref = f"#{int(rng.integers(100000, 999999))}"
        subject, body = text.compose((subjects, bodies), tone, product, order_ref, int(rng.integers(2, 20)), rng, 0.04)
        logits[i] = (-2.1 + topic_weight + text.TONES[tone][0] + 0.6 * z[i] + 0.7 * (tenure_days[i] < 90)
                     + CHANNEL_ESCALATION[str(channel[i])] + drift.escalation_shift)
        rows.append((f"T{day:%Y%m%d}{i:05d}", population.customer_id[who[i]], subject, body))
    escalated = rng.random(n) < _sigmoid(logits + rng.normal(0, 0.5, size=n))
    lag_hours = np.where(escalated, rng.uniform(20, 24 * OUTCOME_MAX_LAG_DAYS, size=n), rng.exponential(10, size=n))
    resolved = times + np.minimum(lag_hours * 3600, 24 * OUTCOME_MAX_LAG_DAYS * 3600 - 1).astype("timedelta64[s]")
    frame = pd.DataFrame({
        "ticket_id": [r[0] for r in rows],
        "customer_id": [r[1] for r in rows],
        "created_at": _format_ts(times),
        "channel": channel,
        "subject": [r[2] for r in rows],
        "body": [r[3] for r in rows],
    })
    return TicketDay(frame, escalated, resolved)


def outcomes_for(day: date, population: Population, tickets_per_day: int, seed: int, drift: DriftSpec) -> pd.DataFrame:
    """Outcomes resolved on `day`, for tickets opened up to three days before."""
    frames = []
    for back in range(OUTCOME_MAX_LAG_DAYS + 1):
        opened = day - timedelta(days=back)
        if opened < POPULATION_START:
            continue
        td = tickets_for(opened, population, tickets_per_day, seed, drift if back == 0 else DriftSpec())
        resolved_day = td.resolved_at.astype("datetime64[D]")
        mask = resolved_day == np.datetime64(day, "D")
        frames.append(pd.DataFrame({
            "ticket_id": td.tickets["ticket_id"].to_numpy()[mask],
            "escalated": np.where(td.escalated[mask], "true", "false"),
            "resolved_at": _format_ts(td.resolved_at[mask]),
        }))
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values("resolved_at", kind="stable").reset_index(drop=True)


@dataclass
class DayFeed:
    """Everything that lands for one day, before any malformed rows are added."""

    day: date
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)


def generate_day(day: date, tickets_per_day: int = 2000, seed: int = 7, drift: DriftSpec | None = None,
                 customers: int = 20000) -> DayFeed:
    """Generate the clean feed of one day: tickets, orders and ticket outcomes."""
    drift = drift or DriftSpec()
    population = Population.create(seed, customers)
    return DayFeed(day, {
        "tickets": tickets_for(day, population, tickets_per_day, seed, drift).tickets,
        "orders": orders_for(day, population, tickets_per_day, seed, drift),
        "ticket_outcomes": outcomes_for(day, population, tickets_per_day, seed, drift),
    })


def generate(day: date, tickets_per_day: int, seed: int, drift: str | None) -> dict[str, pd.DataFrame]:
    """The feed as the engine calls it: every source's clean rows for one day (`drift` as --drift takes it)."""
    return generate_day(day, tickets_per_day, seed, DriftSpec.parse(drift)).frames
