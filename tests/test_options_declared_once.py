"""Each option declared once (SDEdit, Stroke Regions to Words, CLIP Semantic Guidance; GradOP+ and the panorama
have their own tests): the method's inputs are one list (``method_inputs``) whose ids are exactly its config's
fields, the nodes show those inputs with those defaults, and the config is built from a node's inputs by name
(``config_from_inputs``: options by name, other inputs left out, an input the node did not send at its default)."""
import dataclasses

import pytest

from devkit import harness

# module -> (config class, the nodes taking its method inputs, method_inputs' keywords)
METHODS = {
    "sdedit": ("SDEditConfig", ("GS_SDEdit",), {"sweep": True}),
    "regions": ("RegionsConfig", ("GS_StrokeRegions",), {}),
    "semantic": ("SemanticConfig", ("GS_CLIPSemanticGuidance",), {}),
}
# a value of each option's type that is no default, to see it reach its field
SENT = {str: "sent", float: 0.55, int: 3}


@pytest.mark.parametrize("name", list(METHODS))
def test_the_config_is_the_method_inputs_built_by_name(host, name):
    module = harness.loaded_module(f"{harness.PACK_NAME}.nodes.{name}")
    config_name, nodes, keywords = METHODS[name]
    config_class = getattr(module, config_name)
    specs = module.method_inputs(**keywords)
    fields = [field.name for field in dataclasses.fields(config_class)]
    assert [spec.id for spec in specs] == fields  # one field per input, in the widgets' order
    for node in nodes:
        spec = host.nodes.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()
        inputs = {**spec["required"], **spec.get("optional", {})}
        defaults = {field: inputs[field][1].get("default") for field in fields}
        assert dataclasses.asdict(module.config_from_inputs({})) == defaults, node
    sent = {}
    for spec in specs:
        options = getattr(spec, "options", None)
        sent[spec.id] = options[-1] if options else SENT[type(spec.default)]
    built = module.config_from_inputs({**sent, "seed": 7, "model": object()})
    assert dataclasses.asdict(built) == sent


def test_the_sdedit_sigmas_node_takes_strength_and_semantics_by_name(host):
    module = harness.loaded_module(f"{harness.PACK_NAME}.nodes.sdedit")
    spec = host.nodes.NODE_CLASS_MAPPINGS["GS_SDEditSigmas"].INPUT_TYPES()["required"]
    assert [s.id for s in module.method_inputs(sweep=False)] == ["strength", "semantics"]
    assert list(spec)[-2:] == ["strength", "semantics"]
    config = module.config_from_inputs({"strength": 0.25, "semantics": "comfy", "scheduler": "normal"})
    assert (config.strength, config.semantics, config.repeats, config.strength_sweep) == (0.25, "comfy", 1, "")
