"""guidance/checks.py: the input checks every method shares (strength and mask checks: test_sdedit_guidance.py)."""
import pytest

from guidance import checks


def test_hex_colours_in_all_three_forms():
    assert checks.parse_hex_colour("#336699") == (0x33 / 255, 0x66 / 255, 0x99 / 255)
    assert checks.parse_hex_colour(" 336699 ") == checks.parse_hex_colour("#336699")
    assert checks.parse_hex_colour("#369") == checks.parse_hex_colour("#336699")
    assert checks.parse_hex_colour("#FFFFFF") == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("text", ["blue", "#12345", "369", "#ggg", "#3366990", ""])
def test_anything_else_is_an_error_naming_the_input(text):
    with pytest.raises(ValueError, match=f"^background_color: '{text}' is not a colour"):
        checks.parse_hex_colour(text, "background_color")


def test_the_default_input_name_is_colour():
    with pytest.raises(ValueError, match="^colour: 'blue' is not a colour"):
        checks.parse_hex_colour("blue")
