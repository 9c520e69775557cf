"""Shared base of the video sources (kind `video_source`): they hand VideoRefs to video tasks and
remember how many of them the task could read, which is their effect check."""

from __future__ import annotations

from harness.interfaces import Method


class VideoSource(Method):
    kind = "video_source"
    family = "video"

    def videos(self, ctx) -> list:
        raise TypeError(f"{type(self).__name__} must define videos()")  # abstract: each subclass overrides it

    def note_loaded(self, readable: int, errors: list[dict]) -> None:
        self._readable, self._errors = getattr(self, "_readable", 0) + readable, errors

    def check_effect(self, lm, ctx, result):
        if getattr(self, "_readable", 0) < 1:
            return "the source yielded no readable video"
        return None
