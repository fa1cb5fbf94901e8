import pytest
import yaml

from scaling_search.errors import UsageError
from scaling_search.space import SPACES_DIR, load_space, parse_space, presets

MINIMAL = {"name": "t", "data": {"name": "cifar10"}, "proxy": {"epochs": 1}}


def test_shipped_spaces_load():
    assert {"default", "cpu", "smoke"} <= set(presets())
    for name in presets():
        space = load_space(SPACES_DIR / f"{name}.yaml")
        assert space.name == name
    default = load_space(SPACES_DIR / "default.yaml")
    assert default.baseline.resolution == 64 and default.constraint.mode == "measured" and len(default.seeds) >= 2
    for name in ("imagenette", "default", "cpu", "smoke"):  # racing is the shipped allocation
        assert load_space(SPACES_DIR / f"{name}.yaml").racing.enabled, name
    cpu = load_space(SPACES_DIR / "cpu.yaml")
    assert cpu.racing.max_trainings == 88 and cpu.racing.delta <= 0.01 and cpu.proxy.test_subset is None


def test_defaults_and_fingerprint():
    space = parse_space(MINIMAL)
    assert space.constraint.budget == "2x" and space.seeds == (0, 1)
    other = parse_space({**MINIMAL, "proxy": {"epochs": 2}})
    assert space.fingerprint() != other.fingerprint()
    described = parse_space({**MINIMAL, "description": "words"})
    assert space.fingerprint() == described.fingerprint()  # a description does not change the study
    # Racing off adds no unit: the hash of folders made before it existed; on, its limits decide which units exist.
    off = parse_space({**MINIMAL, "racing": {"enabled": False, "max_seeds": 5}})
    on = parse_space({**MINIMAL, "racing": {"enabled": True}})
    assert off.fingerprint() == space.fingerprint() != on.fingerprint()
    assert on.fingerprint() != parse_space({**MINIMAL, "racing": {"enabled": True, "max_seeds": 9}}).fingerprint()


@pytest.mark.parametrize(
    "data,fragment",
    [
        ({**MINIMAL, "colour": "red"}, "unknown key 'colour'"),
        ({**MINIMAL, "proxy": {"epochs": 1, "lr_max": 3}}, "unknown key 'proxy.lr_max'"),
        ({**MINIMAL, "proxy": {"epochs": "ten"}}, "proxy.epochs: expected integer"),
        ({**MINIMAL, "seeds": 3}, "seeds: expected a list"),
        ({"name": "t", "data": {"name": "cifar10"}}, "missing required key 'proxy'"),
        ({**MINIMAL, "data": {}}, "missing required key 'data.name'"),
        ({**MINIMAL, "constraint": {"budget": "abc"}}, "budget"),
        ({**MINIMAL, "grid": {"kind": "spiral"}}, "grid.kind"),
        ({**MINIMAL, "proxy": {"epochs": 0}}, "proxy.epochs"),
        ({**MINIMAL, "seeds": [1, 1]}, "repeat"),
        ({**MINIMAL, "racing": {"enabled": True, "delta": 0}}, "racing.delta"),
        ({**MINIMAL, "racing": {"alpha": 0.7}}, "racing.alpha"),
        ({**MINIMAL, "racing": {"enabled": True, "max_seeds": 1}}, "racing.max_seeds"),
        ({**MINIMAL, "racing": {"max_trainings": 0}}, "racing.max_trainings"),
        ({**MINIMAL, "proxy": {"epochs": 3}, "racing": {"enabled": True}, "pruning": {"enabled": True}}, "choose one"),
        ({**MINIMAL, "racing": {"rounds": 3}}, "unknown key 'racing.rounds'"),
        ({**MINIMAL, "name": "../escape"}, "plain word"),
        ([1, 2], "mapping"),
    ],
)
def test_bad_spaces_name_the_key(data, fragment):
    with pytest.raises(UsageError) as info:
        parse_space(data)
    assert fragment in str(info.value)


def test_malformed_yaml_and_unsafe_tags(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nproxy: [epochs: 1\n")
    with pytest.raises(UsageError, match="not valid YAML at line"):
        load_space(bad)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text(
        "name: !!python/object/apply:os.system ['echo hacked']\ndata: {name: cifar10}\nproxy: {epochs: 1}\n"
    )
    with pytest.raises(UsageError):
        load_space(unsafe)
    with pytest.raises(UsageError, match="does not exist"):
        load_space(tmp_path / "missing.yaml")


def test_overrides_validate():
    space = parse_space(MINIMAL)
    assert space.with_overrides(constraint={"budget": "4x"}).constraint.budget == "4x"
    with pytest.raises(UsageError):
        space.with_overrides(constraint={"budget": "0x"})
    assert yaml.safe_load(yaml.safe_dump(space.to_dict()))["proxy"]["epochs"] == 1
