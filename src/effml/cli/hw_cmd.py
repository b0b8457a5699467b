"""`effml hw list | show NAME`: the hardware catalog, every figure with its source."""

from __future__ import annotations

from effml.cli.common import add_json_flag, console, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("hw", help="list the hardware catalog or show one device's figures and sources",
                       description="The hardware catalog: dense peaks per dtype, bandwidth, memory, power, price.")
    hw = p.add_subparsers(dest="hw_command", required=True, metavar="{list,show}")
    ls = hw.add_parser("list", help="every device (and `local` once `effml calibrate` has run)")
    add_json_flag(ls)
    ls.set_defaults(run=run)
    show = hw.add_parser("show", help="device(s): every figure with its source")
    show.add_argument("name", nargs="+", help="device name(s) or aliases, space- or comma-separated "
                                              "(e.g. h100 rpi5 local)")
    add_json_flag(show)
    show.set_defaults(run=run)


def run(args) -> int:
    from effml.hardware import get_device, list_devices

    if args.hw_command == "show":
        from effml.cli.common import parse_hw

        devs = [get_device(name) for name in parse_hw(args.name, "effml hw show")]
        if args.json:
            print_json(devs[0].to_dict() if len(devs) == 1 else {"devices": [d.to_dict() for d in devs]})
        else:
            from effml.hardware.present import device_table

            for dev in devs:
                console().print(device_table(dev))
        return 0
    devices = list_devices(include_local=True)
    if args.json:
        print_json({"devices": [d.to_dict() for d in devices]})
        return 0
    from effml.hardware.present import catalog_table

    console().print(catalog_table(devices))
    if not any(d.key == "local" for d in devices):
        console().print("`local` (this machine) is not calibrated yet: run `effml calibrate`.")
    return 0
