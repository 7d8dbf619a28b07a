"""The ``claybot`` command line: stylize, check, tiny-models."""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
import time
from pathlib import Path

from bot.config import ConfigError, load_config
from pipeline.errors import ClaybotError

logger = logging.getLogger(__name__)

ROOT_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"strength must be between 0 and 1, got {value:g}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their options."""
    parser = argparse.ArgumentParser(prog="claybot", description="Turn photos into claymation-style pictures.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    stylize = sub.add_parser("stylize", help="stylize one photo from the command line")
    stylize.add_argument("photo", type=Path)
    stylize.add_argument("-o", "--output", type=Path, required=True, help="where to write the PNG")
    stylize.add_argument("--strength", type=_strength, default=None, help="0–1; default: the style's")
    stylize.add_argument("--style", default=None, help="a [styles.*] name; default: pipeline.default_style")
    stylize.add_argument("--seed", type=int, default=None, help="makes the result reproducible; default: random")
    stylize.add_argument("--config", type=Path, default=Path("config.toml"))

    check = sub.add_parser("check", help="validate the config and load every model")
    check.add_argument("--config", type=Path, default=Path("config.toml"))

    tiny = sub.add_parser("tiny-models", help="write tiny random-weight models and a config using them")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--from", dest="template", type=Path, default=ROOT_CONFIG,
                      help="config whose settings and styles the tiny config copies (default: the repository's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``claybot`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Libraries' own chatter (diffusers, httpx) is noise at INFO.
    for noisy in ("httpx", "diffusers", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return {"stylize": cmd_stylize, "check": cmd_check, "tiny-models": cmd_tiny_models}[args.command](args)
    except ClaybotError as err:
        print(f"claybot: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1


def cmd_stylize(args: argparse.Namespace) -> int:
    """Stylize one photo and print what was done."""
    from pipeline.images import decode_photo, encode_png
    from pipeline.stylizer import Photo, Stylizer

    config = load_config(args.config)
    style = args.style or config.pipeline.default_style
    if style not in config.styles:
        raise ConfigError(f"--style {style!r}: no such style (have: {', '.join(sorted(config.styles))})")
    strength = config.styles[style].default_strength if args.strength is None else args.strength
    seed = secrets.randbelow(2**31) if args.seed is None else args.seed
    try:
        data = args.photo.read_bytes()
    except OSError as err:
        raise ClaybotError(f"{args.photo}: cannot read it ({err.strerror})") from None

    stylizer = Stylizer(config.gpu())
    started = time.perf_counter()
    image = decode_photo(data, max_pixels=int(config.pipeline.max_input_megapixels * 1e6))
    decode_s = time.perf_counter() - started
    result = stylizer.run([Photo(image, seed)], style=style, strength=strength)[0]
    started = time.perf_counter()
    png = encode_png(result.image)
    result.timings = {"decode": decode_s, **result.timings, "encode": time.perf_counter() - started}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(png)

    print(f"tags:     {', '.join(result.tags) or '(none)'}")
    print(f"prompt:   {result.prompt}")
    print(f"seed:     {result.seed}")
    print(f"style:    {style}, strength {strength:g}")
    print("timings:  " + " · ".join(f"{stage} {secs:.2f}s" for stage, secs in result.timings.items())
          + f" · total {sum(result.timings.values()):.2f}s")
    print(f"wrote {args.output} ({result.image.width}×{result.image.height})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config, then load every model the way the worker would."""
    from pipeline.stylizer import Stylizer

    config = load_config(args.config)
    print(f"{args.config}: settings are valid")
    for key, spec in config.model_specs().items():
        print(f"  {key} = {spec if isinstance(spec, str) else spec.url}")
    Stylizer(config.gpu())
    print("every model loads")
    return 0


def cmd_tiny_models(args: argparse.Namespace) -> int:
    """Write tiny models and DIR/config.toml: the template config with its models pointed at them."""
    from pipeline.tiny import write_tiny_models

    if not args.template.is_file():
        raise ConfigError(f"{args.template}: no config to copy; pass --from path/to/config.toml")
    load_config(args.template, check_models=False)  # refuse to copy a broken template; its models are replaced
    tiny = write_tiny_models(args.directory)
    path = args.directory / "config.toml"
    path.write_text(tiny_config_text(args.template.read_text(encoding="utf-8"), tiny), encoding="utf-8")
    load_config(path)
    print(f"wrote tiny models and {path}")
    print(f"try: claybot stylize photo.jpg -o out.png --config {path}")
    return 0


def tiny_config_text(template: str, tiny) -> str:
    """The template config (comments kept) with every model replaced by its tiny counterpart."""
    import tomlkit

    doc = tomlkit.parse(template)
    pipeline = doc.setdefault("pipeline", tomlkit.table())
    pipeline["base_model"] = str(tiny.sdxl_single_file)  # single file, as the original workflow's dreamshaperXL
    pipeline["base_config"] = str(tiny.sdxl_folder)
    pipeline["vae"] = ""
    pipeline["megapixels"] = 0.0164  # about 128×128: tiny models are about plumbing, not pixels
    pipeline["steps"] = 10
    pipeline["cache_dir"] = str(tiny.sdxl_folder.parent / "cache")
    doc.setdefault("tagger", tomlkit.table())["model"] = str(tiny.tagger_folder)
    for style in doc.get("styles", {}).values():
        if style.get("lora"):
            style["lora"] = str(tiny.lora_kohya)
    return tomlkit.dumps(doc)
