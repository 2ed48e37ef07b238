"""Ticket text for the synthetic support feed: topics, products, tone and typos."""

from __future__ import annotations

import numpy as np

PRODUCTS = (
    "wireless headphones", "espresso machine", "running shoes", "standing desk", "air fryer",
    "4K monitor", "yoga mat", "electric toothbrush", "backpack", "smart watch", "blender",
    "office chair", "winter jacket", "robot vacuum", "bluetooth speaker", "e-reader",
    "mechanical keyboard", "kettle", "hiking boots", "phone case", "desk lamp", "gaming mouse",
    "baby monitor", "coffee grinder", "bike helmet",
)

# topic -> (escalation weight, subjects, bodies). {p} product, {o} order number, {d} days.
TOPICS: dict[str, tuple[float, tuple[str, ...], tuple[str, ...]]] = {
    "delivery_delay": (0.5, (
        "Where is my order?", "Order {o} still not delivered", "Delivery late", "Parcel hasn't arrived",
    ), (
        "I ordered the {p} {d} days ago and it still has not arrived.",
        "Tracking for order {o} has not moved for {d} days. When will my {p} be delivered?",
        "The delivery date for my {p} passed {d} days ago and nobody tells me anything.",
    )),
    "damaged_item": (0.7, (
        "Item arrived damaged", "Broken {p}", "Damaged parcel, order {o}",
    ), (
        "My {p} arrived with a cracked casing and does not turn on.",
        "The box was crushed and the {p} inside is broken. Order {o}.",
        "Received the {p} today, it is scratched all over and one part is missing.",
    )),
    "wrong_item": (0.6, (
        "Wrong item received", "This is not what I ordered", "Order {o}: wrong product",
    ), (
        "I ordered a {p} but received something completely different.",
        "Order {o} contained the wrong colour and size of the {p}.",
    )),
    "refund_request": (0.9, (
        "Refund request", "I want my money back", "Refund for order {o}", "Still waiting for refund",
    ), (
        "I returned the {p} {d} days ago and I am still waiting for the refund.",
        "Please refund order {o}, the {p} does not work as described.",
        "You promised a refund for the {p} {d} days ago. Nothing has happened.",
    )),
    "double_charge": (1.2, (
        "Charged twice", "Double payment on my card", "Billing error on order {o}",
    ), (
        "My card was charged twice for the {p}, order {o}. Please fix this.",
        "I see two payments for the same {p} on my bank statement.",
    )),
    "account_access": (0.1, (
        "Cannot log in", "Password reset not working", "Account locked",
    ), (
        "The password reset link never arrives, I cannot log into my account.",
        "My account is locked after the app update and I cannot see my orders.",
    )),
    "product_question": (-1.2, (
        "Question about the {p}", "Is the {p} compatible?", "Product info",
    ), (
        "Does the {p} come with a warranty and a charger?",
        "Can you tell me the dimensions of the {p} before I order?",
        "Is the {p} available in another colour?",
    )),
    "return_label": (-0.6, (
        "Return label", "How do I return the {p}?", "Need a return label for {o}",
    ), (
        "Could you send me a return label for the {p}? It does not fit.",
        "How do I return order {o}? I cannot find the label in the box.",
    )),
    "warranty_claim": (0.4, (
        "Warranty claim", "{p} stopped working", "Defect after {d} days",
    ), (
        "The {p} stopped working after {d} days of normal use. Is this covered by warranty?",
        "My {p} makes a loud noise since last week, I would like a repair or replacement.",
    )),
    "cancellation": (0.0, (
        "Cancel my order", "Cancel order {o}", "Please cancel",
    ), (
        "I want to cancel order {o} for the {p} before it ships.",
        "Please cancel the {p}, I ordered it by mistake.",
    )),
}

# Appears only under drift: a topic the model has never seen.
DRIFT_TOPIC = ("subscription_fee", 1.0, (
    "Unexpected subscription fee", "Why am I paying for Plus?", "Cancel Plus membership",
), (
    "I was charged a monthly Plus membership fee that I never signed up for.",
    "Your new Plus subscription renewed automatically and charged my card again.",
))

TONES: dict[str, tuple[float, tuple[str, ...], tuple[str, ...]]] = {
    "polite": (-0.5, ("Hello,", "Hi there,", "Good morning,"), ("Thank you for your help!", "Kind regards.", "Thanks in advance.")),
    "neutral": (0.0, ("Hi,", "", "Hello,"), ("", "Thanks.", "Regards.")),
    "frustrated": (0.6, ("Hi,", "Hello again,", ""), (
        "This is the second time I am writing about this.", "Please sort this out quickly.", "I am really disappointed.")),
    "angry": (1.2, ("", "This is unacceptable.", "Seriously?"), (
        "I will file a chargeback if this is not fixed TODAY.", "Worst service ever, I want to speak to a manager.",
        "I am going to leave a 1-star review everywhere.")),
}

TONE_NAMES = tuple(TONES)


def add_typos(text: str, rng: np.random.Generator, rate: float) -> str:
    """Swap adjacent letters in a few words, like hurried typing."""
    words = text.split(" ")
    for i, word in enumerate(words):
        if len(word) > 3 and rng.random() < rate:
            j = int(rng.integers(0, len(word) - 1))
            words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2:]
    return " ".join(words)


def compose(topic: tuple[str, ...], tone: str, product: str, order_ref: str, days: int,
            rng: np.random.Generator, typo_rate: float) -> tuple[str, str]:
    """A subject and body for one ticket."""
    subjects, bodies = topic[0], topic[1]
    fill = {"p": product, "o": order_ref, "d": days}
    subject = str(rng.choice(subjects)).format(**fill)
    core = str(rng.choice(bodies)).format(**fill)
    _, openers, closers = TONES[tone]
    parts = [str(rng.choice(openers)), core, str(rng.choice(closers))]
    if tone == "angry" and rng.random() < 0.5:
        core_upper = core.upper()
        parts[1] = core_upper
    body = " ".join(p for p in parts if p)
    return subject, add_typos(body, rng, typo_rate)
