"""One rclpy node with its executor, in a context of its own unless one is given.

The policy node, the sim robot and the recorder each hold one: several can live in one
process (tests, benchmarks), each shuts down only what it started, and ``close()`` leaves no
executor thread behind. SIGINT is left to the caller (the verbs stop on it cleanly).
"""

from __future__ import annotations

import threading

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions


class OwnedNode:
    def __init__(self, name: str, context=None, **node_options):
        self.owns_context = context is None
        self.context = context or rclpy.Context()
        if self.owns_context:
            rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = Node(name, context=self.context, **node_options)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread: threading.Thread | None = None

    @property
    def closed(self) -> bool:
        return self.node is None

    def spin_in_background(self, name: str) -> None:
        """Run the executor on a daemon thread until ``close()``."""
        self._thread = threading.Thread(target=self._spin, name=name, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001  (the context was shut down under it)
            pass

    def close(self) -> None:
        """Stop the executor (and its thread), destroy the node, shut an owned context down; idempotent."""
        if self.node is None:
            return
        self.executor.shutdown(timeout_sec=2.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.node.destroy_node()
        self.node = None
        if self.owns_context and self.context.ok():
            rclpy.shutdown(context=self.context)
