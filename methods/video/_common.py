"""Shared base of the video sources (kind `video_source`): they hand VideoRefs to video tasks and
remember how many of them the task could read, which is their effect check."""

from __future__ import annotations

from harness import interfaces


class VideoSource(interfaces.VideoSource):
    family = "video"

    def note_loaded(self, readable: int, errors: list[dict]) -> None:
        self._readable, self._errors = getattr(self, "_readable", 0) + readable, errors

    def check_effect(self, lm, ctx, result):
        if getattr(self, "_readable", 0) < 1:
            return "the source yielded no readable video"
        return None
