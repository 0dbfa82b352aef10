"""``python -m vmi.volatility --plugin-dir``: prints the plugin directory for ``vol -p``."""

import argparse
import sys

from . import isf_cache_dir, plugin_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vmi.volatility",
        description="Volatility 3 on a running VM: "
        'vol -p "$(python -m vmi.volatility --plugin-dir)" '
        "-f vmi+qemu:///path/qmp.sock linux.pslist",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--plugin-dir", action="store_true", help="print the plugin directory (for vol -p)"
    )
    what.add_argument(
        "--isf-cache", action="store_true", help="print where exported ISFs are kept"
    )
    args = parser.parse_args(argv)
    print(plugin_dir() if args.plugin_dir else isf_cache_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
