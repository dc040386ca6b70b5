"""The one error a member is shown: :class:`UserError`.

Raise it anywhere a command, button, select, form or reaction cannot go on because of what
the member asked for (bad input, a cap, a blocked word, a result that is gone). One handler
(the command tree's ``on_error`` and the components' shared handler) turns it into one
private, plain message; nothing else ever reaches a member but a short apology with a
reference.
"""

from __future__ import annotations

#: What a refusal adds when nothing was sent to the image service.
NOTHING_SENT = "Nothing was sent."
#: What a refusal of a settings change adds.
NOTHING_CHANGED = "Nothing changed."


class UserError(Exception):
    """What the member asked for cannot be done; ``message`` is safe to show them.

    ``message`` is a clause without a final full stop ("the prompt is empty"); ``outcome``
    says what did not happen ("Nothing was sent."). ``plain`` messages are whole sentences
    shown as they are ("This result is no longer available.").
    """

    def __init__(self, message: str, *, outcome: str = NOTHING_SENT, plain: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.outcome = outcome
        self.plain = plain

    def render(self) -> str:
        """The text the member sees."""
        if self.plain:
            return self.message
        sentence = self.message if self.message.endswith((".", "!", "?")) else self.message + "."
        return f"❌ {sentence} {self.outcome}".rstrip()
