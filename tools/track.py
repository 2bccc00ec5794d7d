"""``track``: objects followed over the frames of a video, counted once each.

Tracks are made of sightings (``TrackPoint``) of one object over time; each track is a region
(``TrackRegion``, id ``trk_<n>_<i>``) whose ``image`` is the video id and whose ``box`` is the box
at first sight.
"""

from __future__ import annotations

from pydantic import BaseModel

from visagent.tools.base import Box, Region


class TrackPoint(BaseModel):
    """One sighting: ``time`` seconds from the start of the video; ``frame`` the 0-based index of
    the frame in the video; ``box`` [x0, y0, x1, y1] pixels of the frame; ``score`` the detector's."""

    time: float
    frame: int
    box: Box
    score: float


class TrackRegion(Region):
    """A tracked object: id ``trk_<n>_<i>``; ``image`` the video id (``vid_0``); ``box`` the box at
    first sight; ``points`` its sightings in time order; ``first_seen`` / ``last_seen`` seconds;
    ``mean_score`` the mean detector score over ``points``."""

    points: list[TrackPoint]
    first_seen: float
    last_seen: float
    mean_score: float
