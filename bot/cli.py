"""The ``claybot`` command line: stylize, animate, check, models, tiny-models."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bot.config import Config, ConfigError, DiscordSettings, TelegramSettings, load_config, token
from bot.observability import setup_logging
from bot.service import open_queue, run_claybot, status_file
from pipeline.core.errors import ClaybotError
from pipeline.core.intake import take_in
from pipeline.core.jobs import MAX_SEED, BadRequest, Done, Failed, Job, JobHandle, JobQueue, Progress, check_strength
from pipeline.core.kinds import ClipSpec, PictureSpec, engine_takes

logger = logging.getLogger(__name__)

ROOT_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    try:
        return check_strength(value)
    except BadRequest as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their options."""
    parser = argparse.ArgumentParser(prog="claybot", description="Turn photos into claymation-style pictures.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    stylize = sub.add_parser("stylize", help="stylize one photo from the command line")
    stylize.add_argument("photo", type=Path)
    stylize.add_argument("-o", "--output", type=Path, required=True, help="where to write the PNG")
    stylize.add_argument("--strength", type=_strength, default=None, help="0.05–1; default: the style's")
    stylize.add_argument("--style", default=None, help="a [styles.*] name; default: pipeline.default_style")
    stylize.add_argument("--seed", type=int, default=None, help="makes the result reproducible; default: random")
    stylize.add_argument("--speed", default=None, help="a [speed.*] preset or 'default'; default: the style's")
    stylize.add_argument("--words", default=None, help="your own words to add, e.g. 'as a knight in armour'")
    stylize.add_argument("--config", type=Path, default=Path("config.toml"))

    animate = sub.add_parser("animate", help="make a short clip (MP4) of a picture, as [animate] configures")
    animate.add_argument("picture", type=Path)
    animate.add_argument("-o", "--output", type=Path, required=True, help="where to write the MP4")
    animate.add_argument("--seconds", type=float, default=None,
                         help="about how long it plays; default: [animate] frames at its fps")
    animate.add_argument("--style", default=None, help="a [styles.*] name (its motion prompt); default: "
                         "pipeline.default_style")
    animate.add_argument("--seed", type=int, default=None, help="makes the clip reproducible; default: random")
    animate.add_argument("--config", type=Path, default=Path("config.toml"))

    run = sub.add_parser("run", help="run the bot (the enabled chat front ends and the pipeline worker)")
    run.add_argument("--config", type=Path, default=Path("config.toml"))

    worker = sub.add_parser("worker", help="run a pipeline worker in the foreground (see queue.worker_address)")
    worker.add_argument("--config", type=Path, default=Path("config.toml"))
    worker.add_argument("--listen", default="", help="HOST:PORT or a Unix socket path; default: queue.worker_address")

    sweep = sub.add_parser("sweep", help="contact sheet: strength across, trigger weight (and preset) down, one seed")
    sweep.add_argument("photo", type=Path)
    sweep.add_argument("-o", "--output", type=Path, required=True, help="where to write the sheet (PNG)")
    sweep.add_argument("--strengths", type=_numbers, default=[0.3, 0.4, 0.5, 0.6, 0.7])
    sweep.add_argument("--weights", type=_numbers, default=[1.0, 1.5, 2.0], help="trigger word weights")
    sweep.add_argument("--presets", type=_names, default=None,
                       help="speed presets to compare, e.g. default,fast (one row each per weight)")
    sweep.add_argument("--guide", choices=["structure", "identity"], default=None,
                       help="rows are this guide's scales (--guide-scales) instead of trigger weights")
    sweep.add_argument("--guide-scales", type=_numbers, default=[0.0, 0.4, 0.8, 1.2])
    sweep.add_argument("--style", default=None)
    sweep.add_argument("--words", default=None, help="your own words to add to every cell")
    sweep.add_argument("--seed", type=int, default=None)
    sweep.add_argument("--config", type=Path, default=Path("config.toml"))

    status = sub.add_parser("status", help="queue depth, workers, and the last hour's jobs")
    status.add_argument("--config", type=Path, default=Path("config.toml"))

    check = sub.add_parser("check", help="validate the config and load every model")
    check.add_argument("--config", type=Path, default=Path("config.toml"))

    fetch = sub.add_parser("models", help="fetch every model of the config ahead of time and show what is on disk")
    fetch.add_argument("--config", type=Path, default=Path("config.toml"))

    tiny = sub.add_parser("tiny-models", help="write tiny random-weight models and a config using them")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--from", dest="template", type=Path, default=ROOT_CONFIG,
                      help="config whose settings and styles the tiny config copies (default: the repository's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``claybot`` console script."""
    args = build_parser().parse_args(argv)
    quiet = args.command in ("stylize", "animate", "sweep", "check", "status", "models")  # their output is the answer
    level = logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO
    args.log_level = level
    setup_logging(level)  # text; `claybot run` switches to the config's bot.log_format once it has read it
    # Libraries' own chatter (diffusers, httpx) is noise at INFO.
    for noisy in ("httpx", "diffusers", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        commands = {"run": cmd_run, "stylize": cmd_stylize, "animate": cmd_animate, "sweep": cmd_sweep,
                    "worker": cmd_worker, "status": cmd_status, "check": cmd_check, "models": cmd_models,
                    "tiny-models": cmd_tiny_models}
        return commands[args.command](args)
    except ClaybotError as err:
        print(f"claybot: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1


def cmd_stylize(args: argparse.Namespace) -> int:
    """Stylize one photo through the same queue and worker as the chat front ends, and print what was done."""
    config = load_config(args.config)
    job = _take_in(config, _read(args.photo), style=args.style, seed=args.seed,
                   options={"strength": args.strength, "speed": args.speed, "words": args.words})
    result = _run_and_write(config, job, args, "stylizing")
    print(f"tags:     {', '.join(result.tags) or '(none)'}")
    print(f"prompt:   {result.prompt}")
    print(f"seed:     {result.seed}")
    how = f"strength {result.strength:g}, speed {result.speed}" if result.strength else "by instruction"
    print(f"style:    {result.style}, {how}")
    print(f"timings:  {_timings(result)} · total {sum(result.timings.values()):.2f}s")
    print(f"wrote {args.output} ({result.width}×{result.height})")
    return 0


def cmd_animate(args: argparse.Namespace) -> int:
    """Make a clip of one picture through the same queue and worker as the chat front ends; write the MP4."""
    config = load_config(args.config)
    job = _take_in(config, _read(args.picture), kind="clip", style=args.style, seed=args.seed,
                   options={"seconds": args.seconds})
    spec = job.spec
    assert isinstance(spec, ClipSpec)
    result = _run_and_write(config, job, args, "animating")
    print(f"prompt:   {result.prompt}")
    print(f"seed:     {result.seed}")
    print(f"timings:  {_timings(result)}")
    hold = ", each frame held twice" if spec.hold else ""
    print(f"wrote {args.output} ({result.width}×{result.height}, {spec.frames} frames at {spec.fps} fps{hold}, "
          f"{len(result.image):,} bytes)")
    return 0


def _run_and_write(config: Config, job: Job, args: argparse.Namespace, doing: str) -> Done:
    """Run one job through the configured queue and write its result to ``args.output``; its Done."""
    result = asyncio.run(_run_job(config, job, args.verbose, doing))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(result.image)
    return result


def _timings(result: Done) -> str:
    return " · ".join(f"{stage} {secs:.2f}s" for stage, secs in result.timings.items())


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ClaybotError(f"{path}: cannot read it ({err.strerror})") from None


@contextlib.asynccontextmanager
async def _ready_queue(config: Config, verbose: bool) -> AsyncIterator[JobQueue]:
    """The configured queue, started, its worker ready; closed on the way out."""
    queue = open_queue(config, log_level=logging.DEBUG if verbose else logging.WARNING)
    await queue.start()
    try:
        await queue.wait_ready()
        yield queue
    finally:
        await queue.close(grace=0)


def _take_in(config: Config, data: bytes, **options: Any) -> Job:
    """The settled job of a command line's photo and options, before any model loads (``take_in``); an option
    the config does not allow is a usage error."""
    try:
        return asyncio.run(take_in(config, data, **options))
    except BadRequest as err:
        raise ConfigError(str(err)) from None


async def _run_job(config: Config, job: Job, verbose: bool, doing: str) -> Done:
    """One job through the configured queue, its steps as a progress bar on stderr; its Done, or ClaybotError."""
    from tqdm import tqdm

    async with _ready_queue(config, verbose) as queue:
        handle = await queue.submit(job)
        with tqdm(desc=doing, unit="step", file=sys.stderr, leave=False) as bar:
            async for event in handle.events():
                if isinstance(event, Progress):
                    bar.total = event.total
                    bar.update(event.step - bar.n)
                elif isinstance(event, Failed):
                    raise ClaybotError(event.reason)
                elif isinstance(event, Done):
                    return event
    raise AssertionError("a job always ends with Done or Failed")


def cmd_run(args: argparse.Namespace) -> int:
    """Run the bot: the queue and its worker, and every enabled chat front end, until SIGINT/SIGTERM."""
    config = load_config(args.config)
    setup_logging(args.log_level, config.bot.log_format)
    front_ends = _front_end_tokens(config)
    return asyncio.run(run_claybot(config, front_ends, args.verbose))


def _front_end_tokens(config: Config) -> dict[str, str]:
    """The enabled front ends that have a token. One without its token is skipped with a warning naming the
    variable; with none at all, start-up stops saying what to set."""
    sections: dict[str, TelegramSettings | DiscordSettings] = {"telegram": config.telegram, "discord": config.discord}
    enabled = {name: section for name, section in sections.items() if section.enabled}
    if not enabled:
        raise ConfigError("no front end is enabled: set telegram.enabled or discord.enabled to true")
    tokens = {name: value for name, section in enabled.items() if (value := token(section.token_env))}
    if not tokens:
        wanted = " and/or ".join(f"{section.token_env} (the {name} bot token)" for name, section in enabled.items())
        raise ConfigError(f"no bot token in the environment: set {wanted}")
    for name, section in enabled.items():
        if name not in tokens:
            logger.warning("%s is not started: the environment variable %s is empty (or set %s.enabled = false)",
                           name, section.token_env, name)
    return tokens


def cmd_status(args: argparse.Namespace) -> int:
    """Queue depth, live workers, the last hour's jobs and their p50/p95 time."""
    import json

    from pipeline.core.status import pid_alive, render

    config = load_config(args.config, check_models=False)
    if config.queue.backend == "redis":
        from pipeline.core.redis_queue import redis_status

        status = asyncio.run(redis_status(config.queue))
    else:
        path = status_file(config)
        try:
            status = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            print(f"claybot is not running here (no {path}; `claybot run` writes it)")
            return 1
        if not pid_alive(status.get("owner_pid")):
            print(f"claybot run is not running; its last status ({time.ctime(status['updated'])}):")
            for worker in status["workers"]:
                worker["alive"] = False
    print(render(status))
    usage = asyncio.run(_usage(config))
    if usage:
        print("requests in the last 24 h: " + ", ".join(f"{n} {outcome.replace('_', ' ')}"
                                                      for outcome, n in sorted(usage.items())))
    if config.credits.enabled:
        spent = asyncio.run(_credits_today(config))
        if spent is not None:
            print(credits_line(spent))
    return 0


def credits_line(spent: dict[str, int]) -> str:
    """`claybot status`'s line for today's credits (bot.credits ``Credits.today``)."""
    cap = f" of the daily cap of {spent['daily_cap']}" if spent["daily_cap"] else " (no daily cap)"
    return (f"credits spent today: {spent['spent']}{cap}; payments today: {spent['payments']} "
            f"({spent['payments_total']} in all)")


async def _credits_today(config: Config) -> dict[str, int] | None:
    """Today's credits spent and payments, from the ledger (None when there is no database yet)."""
    from bot.credits import Credits
    from bot.store import ClaybotDatabase, store_path

    path = store_path(config.bot)
    if not path.is_file():
        return None
    async with ClaybotDatabase(path) as store:
        return await Credits(store, config.credits).today()


async def _usage(config: Config) -> dict[str, int]:
    """How the last day's requests ended, from the journal (empty when there is no database yet)."""
    from bot.journal import Journal
    from bot.store import ClaybotDatabase, store_path

    path = store_path(config.bot)
    if not path.is_file():
        return {}
    async with ClaybotDatabase(path) as store:
        return await Journal(store, config.limits).usage(time.time() - 86400)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a pipeline worker in the foreground: on the Redis stream, or serving queue.worker_address."""
    import signal

    from pipeline.core.link import batch_limit, worker_key
    from pipeline.gpu.worker import listen, serve

    config = load_config(args.config)
    if config.queue.backend == "redis" and not args.listen:
        from pipeline.gpu.redis_worker import RedisWorker

        worker = RedisWorker(config.gpu(), config.queue)
        # SIGTERM/SIGINT: finish the batch in hand, then leave (its jobs are acknowledged, none is lost).
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: worker.stop.set())
        worker.serve()
        return 0
    address = args.listen or config.queue.worker_address
    if not address:
        raise ConfigError("claybot worker needs an address: set queue.worker_address or pass --listen HOST:PORT")
    key = worker_key(config.queue.worker_key_env)  # stripped exactly as the chat side strips it
    if not key:
        raise ConfigError(f"set the environment variable {config.queue.worker_key_env} to a shared secret first")
    try:
        gpu = config.gpu()
        most = batch_limit(int(config.bot.max_photo_mb * 2**20), gpu.pipeline.max_batch)
        serve(gpu, listen(address, key), max_message=most)
    except KeyboardInterrupt:
        print("claybot worker: stopped", file=sys.stderr)
    return 0


def _numbers(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one number")
    return values


def _names(text: str) -> list[str]:
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise argparse.ArgumentTypeError("give at least one preset name, e.g. default,fast")
    return names


def cmd_sweep(args: argparse.Namespace) -> int:
    """One contact sheet: the photo, then results with strength across and trigger weight down, one seed."""
    import io

    from PIL import Image

    from pipeline.core.images import decode_photo
    from pipeline.core.sheet import contact_sheet

    config = load_config(args.config)
    for strength in args.strengths:
        _strength(str(strength))
    unknown = [name for name in args.presets or [] if name not in config.speed_names()]
    if unknown:
        raise ConfigError(f"--presets: no speed preset {unknown[0]!r} (have: {', '.join(config.speed_names())})")
    try:
        data = args.photo.read_bytes()
    except OSError as err:
        raise ClaybotError(f"{args.photo}: cannot read it ({err.strerror})") from None
    base = _take_in(config, data, style=args.style, seed=args.seed,  # one settled job; each cell varies it
                    options={"words": args.words})
    style, seed = base.style, base.seed
    rows, row_name = args.weights, "weight"
    if not engine_takes(config.styles[style].engine, "strength"):
        return _sweep_seeds(config, args, base, data)
    if args.guide:
        guide = getattr(config.styles[style], args.guide)
        if not guide.enabled:
            model_key = "controlnet" if args.guide == "structure" else "adapter"
            raise ConfigError(f"--guide {args.guide}: style {style!r} has no {args.guide} guide "
                              f"(set styles.{style}.{args.guide}.{model_key})")
        if any(not 0.0 <= scale <= 2.0 for scale in args.guide_scales):
            raise ConfigError("--guide-scales: each scale must be between 0 and 2")
        rows, row_name = args.guide_scales, f"{args.guide} scale"
    original = decode_photo(data, max_pixels=int(config.pipeline.max_input_megapixels * 1e6))

    def cell(strength: float, row: float, preset: str | None) -> Job:
        spec = base.spec
        assert isinstance(spec, PictureSpec)
        spec = dataclasses.replace(spec, strength=strength, speed=preset or spec.speed)
        if args.guide:
            spec = dataclasses.replace(spec, **{f"{args.guide}_scale": row})  # type: ignore[arg-type]
        else:
            spec = dataclasses.replace(spec, trigger_weight=row)
        return dataclasses.replace(base, spec=spec)

    requests = {(strength, row, preset) if args.presets else (strength, row): cell(strength, row, preset)
                for row in rows for strength in args.strengths for preset in args.presets or [None]}
    results = asyncio.run(_run_all(config, requests, args.verbose))
    images = {key: Image.open(io.BytesIO(done.image)).convert("RGB") for key, done in results.items()}
    sheet = contact_sheet(original, images, args.strengths, rows, args.presets, row_name=row_name)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output)
    presets = f" × {len(args.presets)} speed presets ({', '.join(args.presets)})" if args.presets else ""
    row_names = "trigger weights" if row_name == "weight" else f"{row_name}s"
    print(f"seed {seed}, style {style}: {len(args.strengths)} strengths × {len(rows)} {row_names}" + presets)
    print(f"wrote {args.output} ({sheet.width}×{sheet.height})")
    return 0


def _sweep_seeds(config: Config, args: argparse.Namespace, base: Job, data: bytes) -> int:
    """The sheet of a style whose engine has no strength or trigger weight (the edit engine): one row of seeds,
    as many as --strengths has values, from the given seed on."""
    import io

    from PIL import Image

    from pipeline.core.images import decode_photo
    from pipeline.core.sheet import contact_sheet

    if args.guide or args.presets:
        raise ConfigError(f"--{'guide' if args.guide else 'presets'}: style {base.style!r} is made by instruction "
                          "(engine = \"edit\"): it has no guides or speed presets; its sheet compares seeds")
    seeds = [float((base.seed + i) % (MAX_SEED + 1)) for i in range(len(args.strengths))]
    requests = {(seed, 0.0): dataclasses.replace(base, seed=int(seed)) for seed in seeds}
    results = asyncio.run(_run_all(config, requests, args.verbose))
    images = {key: Image.open(io.BytesIO(done.image)).convert("RGB") for key, done in results.items()}
    original = decode_photo(data, max_pixels=int(config.pipeline.max_input_megapixels * 1e6))
    sheet = contact_sheet(original, images, seeds, [0.0], row_name="", column_name="seed")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output)
    print(f"style {base.style} (by instruction, no strength or trigger weight): {len(seeds)} seeds from {base.seed}")
    print(f"wrote {args.output} ({sheet.width}×{sheet.height})")
    return 0


async def _run_all(config: Config, requests: dict, verbose: bool) -> dict:
    """Every request through the queue and worker at once (so compatible ones batch), with one progress bar."""
    from tqdm import tqdm

    async with _ready_queue(config, verbose) as queue:
        handles = {key: await queue.submit(request) for key, request in requests.items()}
        with tqdm(total=len(handles), desc="sweeping", unit="image", file=sys.stderr, leave=False) as bar:
            async def one(handle: JobHandle) -> Done:
                async for event in handle.events():
                    if isinstance(event, Failed):
                        raise ClaybotError(event.reason)
                    if isinstance(event, Done):
                        bar.update(1)
                        return event
                raise AssertionError("a job always ends with Done or Failed")

            done = await asyncio.gather(*(one(handle) for handle in handles.values()))
        return dict(zip(handles, done, strict=True))


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config, fetch every model, then load them the way the worker would."""
    from bot.prefetch import fetch_or_fail

    config = load_config(args.config)
    print(f"{args.config}: settings are valid")
    for key, spec in config.model_specs().items():
        print(f"  {key} = {spec if isinstance(spec, str) else spec.url}")
    fetch_or_fail(config)  # before torch: a model that cannot be fetched is reported in seconds
    from pipeline.gpu.stylizer import Stylizer

    gpu = config.gpu()
    Stylizer(gpu)
    if any(style.engine == "edit" for style in gpu.styles.values()):  # a worker loads these on their first job
        from pipeline.gpu.edit import EditEngine

        EditEngine(gpu, None).load_all()
    print("every model loads")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Fetch every model of the config into the cache and print each one's source, path, size and checksum."""
    from bot.prefetch import fetch_models, render

    config = load_config(args.config)
    fetched, failures = fetch_models(config)
    for model in fetched:
        print(render(model))
    for failure in failures:
        print(f"claybot: {failure}", file=sys.stderr)
    if failures:
        print(f"claybot: {len(failures)} of {len(fetched) + len(failures)} models could not be fetched",
              file=sys.stderr)
        return 1
    print(f"all {len(fetched)} models are on disk")
    return 0


def cmd_tiny_models(args: argparse.Namespace) -> int:
    """Write tiny models and DIR/config.toml: the template config with its models pointed at them."""
    if not args.template.is_file():
        raise ConfigError(f"{args.template}: no config to copy; pass --from path/to/config.toml")
    load_config(args.template, check_models=False)  # refuse to copy a broken template; its models are replaced
    # absolute: the config resolves relative model paths from its own folder, not from where this ran
    directory = args.directory.expanduser().resolve()
    path = directory / "config.toml"
    try:
        directory.mkdir(parents=True, exist_ok=True)  # a file in the way fails here, in a second, before torch loads
        from pipeline.gpu.tiny import write_tiny_models
        from pipeline.gpu.tiny_edit import write_tiny_edit_model
        from pipeline.gpu.tiny_video import write_tiny_video_models

        tiny = write_tiny_models(directory)
        video = write_tiny_video_models(directory / "video")
        edit = write_tiny_edit_model(directory / "edit")
        path.write_text(tiny_config_text(args.template.read_text(encoding="utf-8"), tiny, video, edit),
                        encoding="utf-8")
    except OSError as err:
        raise ClaybotError(f"{args.directory}: cannot write the tiny models there ({err.strerror})") from None
    load_config(path)
    print(f"wrote tiny models and {path}")
    print(f"guide models (for [styles.*.structure] / [styles.*.identity]): controlnet {tiny.controlnet_folder}, "
          f"depth_model {tiny.depth_folder}, adapter {tiny.ip_adapter}, image_encoder {tiny.image_encoder_folder}, "
          f"face_detector {tiny.face_detector}")
    print(f"image-to-video models (for [animate] model): wan {video.wan_folder}, ltx {video.ltx_folder}")
    print(f"edit model (for [styles.*.edit] model): {edit}")
    print(f"try: claybot stylize photo.jpg -o out.png --config {path}")
    return 0


def tiny_config_text(template: str, tiny: Any, video: Any = None, edit: Path | None = None) -> str:
    """The template config (comments kept) with every model replaced by its tiny counterpart (and clips on, made
    by the tiny Wan model, when ``video`` names the tiny image-to-video models; edit styles made by the tiny FLUX.2
    klein model, when ``edit`` names it, else left off)."""
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
        _tiny_guides(style, tiny)
        if style.get("engine") == "edit":  # about 128×128 in 4 steps, on the CPU in a fraction of a second
            if edit is None:
                style["enabled"] = False
                continue
            style.setdefault("edit", tomlkit.table()).update({"model": str(edit), "megapixels": 0.0164})
    # A few-step preset on the tiny speed LoRA, so `/clay fast` runs offline too (Lightning's settings).
    speed = doc.setdefault("speed", tomlkit.table(is_super_table=True))
    for preset in speed.values():
        if preset.get("lora"):
            preset["lora"] = str(tiny.speed_lora)
    if "fast" not in speed:
        fast = tomlkit.table()
        fast.update({"lora": str(tiny.speed_lora), "lora_scale": 1.0, "scheduler": "euler_trailing",
                     "guidance_scale": 0.0, "steps": 4})
        speed["fast"] = fast
    if video is not None:  # clips in seconds on the CPU: 9 frames (4k+1 and 8k+1) of about 128×96, 2 steps
        doc.setdefault("animate", tomlkit.table()).update({
            "enabled": True, "model": str(video.wan_folder), "family": "auto", "frames": 9, "fps": 8,
            "steps": 2, "megapixels": 0.0123, "max_seconds": 4.0})
    return tomlkit.dumps(doc)


def _tiny_guides(style: Any, tiny: Any) -> None:
    """A style's guide models (pipeline.gpu.guides) pointed at the tiny ones, in place."""
    structure, identity = style.get("structure"), style.get("identity")
    if structure is not None and structure.get("controlnet"):
        structure["controlnet"] = str(tiny.controlnet_folder)
        structure["depth_model"] = str(tiny.depth_folder)
    if identity is not None and identity.get("adapter"):
        identity["adapter"] = str(tiny.ip_adapter)
        identity["image_encoder"] = str(tiny.image_encoder_folder)
        if identity.get("face_detector"):
            identity["face_detector"] = str(tiny.face_detector)
