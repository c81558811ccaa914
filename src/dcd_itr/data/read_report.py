"""What a reader did: how many records it read and which it skipped (never a silent drop)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ReadReport:
    source: str
    records_read: int = 0
    skipped: list[str] = field(default_factory=list)

    def skip(self, message: str) -> None:
        self.skipped.append(message)

    def summary(self) -> str:
        text = f"{self.source}: read {self.records_read} records"
        if self.skipped:
            text += f", skipped {len(self.skipped)} bad records:\n  " + "\n  ".join(self.skipped[:20])
            if len(self.skipped) > 20:
                text += f"\n  ... and {len(self.skipped) - 20} more"
        return text
