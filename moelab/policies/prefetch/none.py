"""On-demand loading only: the baseline every prefetcher is measured against."""

from moelab.core.registry import register
from moelab.policies.base import PrefetchPolicy


@register("prefetch", "none")
class NoPrefetch(PrefetchPolicy):
    """Never asks for anything ahead of need."""

    predicts = False
