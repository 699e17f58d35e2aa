"""The in-memory form every loader produces: clients -> examples."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One instruction example (Alpaca fields plus a category label)."""

    instruction: str
    input: str
    output: str
    category: str


@dataclass
class ClientData:
    """One client's examples, split into train / eval / test."""

    client_id: str
    train: list[Example]
    eval: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)

    @property
    def num_train(self) -> int:
        return len(self.train)


@dataclass
class FederatedDataset:
    """Seen clients (sampled for training) and unseen clients (scored only, never trained on)."""

    seen: dict[str, ClientData]
    unseen: dict[str, ClientData]
    source: str
    """Where it came from, for logs and the run summary (e.g. 'flexlora-ni:/path')."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Anything left out on purpose, counted by reason (never dropped silently)."""
