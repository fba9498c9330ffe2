from collections.abc import Callable

from sealproto.framing import FrameDecoder

def run(
    seed: int, inputs: int, out: Callable[[str], None]
) -> tuple[int, int, FrameDecoder, list[int]]: ...
def main() -> None: ...
