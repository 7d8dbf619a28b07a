"""The Telegram front end: python-telegram-bot glue around the shared request flow (bot/flow.py).

- ``app``: the Application's wiring (build, register handlers, run) and ``TelegramFrontEnd`` for `claybot run`;
- ``handlers``: each way to ask (caption, reply, reaction, button, settings) and the one error handler;
- ``photos``: which file a message holds, the photos seen lately, the download;
- ``reply``: one request's status line and answers (the flow paces the edits: bot/pacing.py);
- ``render``: how a result looks (picture, caption, buttons), for live answers and answers after a restart alike;
- ``buttons``: the buttons' callback data, one encoder and one parser;
- ``help``: the commands, /help and the command menu.
"""

from bot.telegram.app import TelegramFrontEnd, build_application

__all__ = ["TelegramFrontEnd", "build_application"]
