"""Which provider clients exist, and building those whose keys are set.

Each hosted provider lives in ``adapters/providers/<name>.py`` and exposes
``from_context(context) -> Provider``; the module name is the provider's name in settings and in
``/generate provider:``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from adapters.providers.base import ProviderContext
from bot.ports import Provider

Factory = Callable[[ProviderContext], Provider]


def factory(name: str) -> Factory:
    module = importlib.import_module(f"adapters.providers.{name}")
    return cast(Factory, module.from_context)


def hosted_providers(context: ProviderContext) -> dict[str, Provider]:
    """A client for every hosted provider whose key is set, in settings order."""
    return {name: factory(name)(context) for name in context.settings.configured_providers}
