"""rosbag2 recordings -> a zarr demonstration store, with the recorder's pairing and checks.

Reads bags written by ``ros2 bag record`` (sqlite3 or mcap) with the pure-Python ``rosbags``
package, no ROS installation needed. Messages are replayed in recorded order through the
same :class:`EpisodeAssembler` the live recorder uses, stamped with their recording times:
each command is a step paired with the newest observation recorded before it. Episodes are cut by the ``/record`` topic (std_msgs/Bool)
when the bag has it; otherwise the whole bag is one episode.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..datasets import EpisodeWriter
from ..datasets.stats import refresh_stats
from ..progress import progress_bar
from .episode_assembly import EpisodeAssembler
from .ros_messages import JointLayout, MessageRejected, command_topic, command_values, image_reader, image_topic


def convert_rosbag(bag: str | Path, out: str | Path, ros: Mapping, task: str, cameras: list[str] = (),
                   record_topic: str = "/record", overwrite: bool = False, min_steps: int = 2,
                   progress: bool = True) -> dict:
    """Convert ``bag`` into episodes appended to ``out``; the assembler's counts plus ``episodes_written``.

    ros: the shared topic settings (configs/ros/default.yaml): layout, controller, interface,
    joint_states_topic, image_topics, image_transport, instruction_topic."""
    from rosbags.highlevel import AnyReader

    bag = Path(bag)
    if not bag.exists():
        raise FileNotFoundError(f"rosbag {bag}: no such file or directory")
    layout = JointLayout.from_config(ros["layout"])
    image_keys = [f"rgb_{cam}" for cam in cameras]
    assembler = EpisodeAssembler(layout, image_keys, min_steps)
    transport = ros.get("image_transport", "raw")
    commands = command_topic(ros["controller"], ros["interface"])
    images = {image_topic(k, ros.get("image_topics") or {}, transport): k for k in image_keys}
    wanted = {ros["joint_states_topic"], commands, ros["instruction_topic"], record_topic, *images}
    written = 0
    with AnyReader([bag]) as reader, EpisodeWriter(out, overwrite=overwrite) as writer:
        connections = [c for c in reader.connections if c.topic in wanted]
        found = {c.topic for c in connections}
        for topic in (ros["joint_states_topic"], commands, *images):
            if topic not in found:
                raise ValueError(f"rosbag {bag}: no topic {topic}; it has {sorted(c.topic for c in reader.connections)}")
        marked = any(c.topic == record_topic and c.msgcount > 0 for c in connections)
        if not marked:
            assembler.start()

        def write(finished) -> None:
            nonlocal written
            if finished is not None:
                writer.add_episode(finished[0], task=task, instruction=finished[1], success=True)
                written += 1

        bar = progress_bar(total=sum(c.msgcount for c in connections), desc="convert", unit="msg", disable=not progress)
        for connection, timestamp, raw in reader.messages(connections=connections):
            bar.update(1)
            stamp = timestamp * 1e-9
            msg = reader.deserialize(raw, connection.msgtype)
            topic = connection.topic
            try:
                if topic == ros["joint_states_topic"]:
                    assembler.joint_state(msg, stamp)
                elif topic == commands:
                    assembler.command(command_values(msg, layout), stamp)
                elif topic in images:
                    assembler.image(images[topic], image_reader(transport)(msg), stamp)
                elif topic == ros["instruction_topic"]:
                    assembler.set_instruction(msg.data)
                elif topic == record_topic:
                    write(assembler.start() if msg.data else assembler.stop())
            except MessageRejected as exc:
                assembler.counts[f"rejected_{exc.reason}"] += 1
        bar.close()
        write(assembler.stop())
        refresh_stats(writer)
    return {**assembler.counts, "episodes_written": written, "marked_by_record_topic": marked}
