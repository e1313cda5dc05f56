"""The video stage's settings (`video.*` in the config): shot detection, output images, quality
filters and interleaving.

A module of its own, below both modules that read it: the stage (`mmcurate.transforms.video`)
and keyframe extraction (`mmcurate.transforms.keyframes`), which the stage imports; in the
stage's module they made a circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mmcurate.schemas.params import Rule, non_negative, positive, unit_interval


@dataclass
class VideoConfig:
    # --- shot detection (see mmcurate.transforms.keyframes)
    analysis_fps: float = 10.0  # frames analysed per second at most (of those decoded)
    # a cut: change >= cut_threshold (mean abs luma+chroma difference, 0-255, on a 64-cell grid)
    # and >= cut_ratio x the mean change of cut_window neighbours each side. laion_talk.mp4: its
    # 7 slide changes score 5.0-27.9, everything else <= 0.4; handheld footage 3-31, no cut.
    cut_threshold: float = 3.0
    cut_ratio: float = 3.0  # PySceneDetect AdaptiveDetector's adaptive_threshold
    cut_window: int = 2  # AdaptiveDetector's window_width
    min_shot_s: float = 0.5  # AdaptiveDetector's min_scene_len, 15 frames at 30 fps
    max_interval_s: float = 10.0  # a long shot gets a keyframe per window of at most this
    skip_nonref: bool = True  # never decode non-reference frames (B-frames)
    skip_static_gops: bool = True  # decode only the keyframe of a GOP whose packets are all small
    # a GOP is static while every packet is <= this x its keyframe's packet (laion_talk.mp4:
    # static GOPs <= 0.016, GOPs with any change >= 0.21; handheld footage >= 0.15)
    static_packet_ratio: float = 0.05
    truncation_tolerance_s: float = 1.0  # a stream ending this much early (or 2%) is truncated
    # --- output images
    max_side: int = 512  # longest side of the stored images, pixels
    image_format: str = "jpeg"  # jpeg | webp
    image_quality: int = 90
    # --- quality filters (HunyuanImage-style, in this order; measured at output size)
    black_max_luma: float = 40.0  # black: 99th-percentile luma <= this (video black is 16)
    blank_max_std: float = 5.0  # blank: luma std <= this (a flat frame plus coding noise)
    single_color_share: float = 0.97  # mostly one colour: >= this share within +-16 of it
    min_sharpness: float = 30.0  # blurry: variance of the Laplacian of luma below this
    near_duplicate_bits: int = 4  # consecutive keyframes whose pHashes differ in <= this many bits
    # --- interleaving (see mmcurate.transforms.interleave)
    max_words_per_text: int = 0  # split a text item beyond this many words (0: no limit)
    speaker_tags: bool = False  # prefix each text item with "[spk0] ", "[spk1] ", ...

    RULES: ClassVar[dict] = {
        "analysis_fps": Rule(gt=0, le=120, why="frames per second"),
        "cut_threshold": positive("mean abs difference, 0-255"),
        "cut_ratio": Rule(ge=1.0, why="x the neighbours' mean change"),
        "cut_window": Rule(ge=1, le=30, why="analysed frames each side"),
        "min_shot_s": non_negative("seconds"),
        "max_interval_s": positive("seconds"),
        "static_packet_ratio": unit_interval("x the keyframe's packet size"),
        "truncation_tolerance_s": non_negative("seconds"),
        "max_side": Rule(ge=16, le=8192, why="pixels"),
        "image_format": Rule(choices=("jpeg", "webp")),
        "image_quality": Rule(ge=1, le=100),
        "black_max_luma": Rule(ge=0, le=255, why="luma 0-255"),
        "blank_max_std": non_negative("luma 0-255"),
        "single_color_share": unit_interval("share of pixels"),
        "min_sharpness": non_negative("variance of the Laplacian"),
        "near_duplicate_bits": Rule(ge=-1, le=64, why="bits of 64; -1 keeps near-duplicates"),
        "max_words_per_text": non_negative("words; 0 = no limit"),
    }
