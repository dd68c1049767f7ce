"""The block language's expression evaluator: arithmetic, conditionals, and refusals with columns."""
import pytest

from graphres.spec.expr import ExprError, evaluate, names_in

ENV = {"planes": 64, "stride": 2, "style": "caffe", "groups": 32, "base_width": 4, "base_channels": 64,
       "avg_down": False}


@pytest.mark.parametrize("text,value", [
    ("planes * 4", 256),
    ("stride if style == 'caffe' else 1", 2),
    ("1 if style == 'caffe' else stride", 1),
    ("planes if groups == 1 else planes * base_width // base_channels * groups", 128),
    ("min(planes, 16) + max(1, stride) % 2", 16),
    ("-planes + 1", -63),
    ("not avg_down and stride != 1", True),
    ("stride != 1 or planes != 64", True),
    ("1 < stride <= 2", True),
    ("7", 7),
])
def test_evaluates(text, value):
    assert evaluate(text, ENV) == value


@pytest.mark.parametrize("text,message,col", [
    ("planes ** 2", "operator '**' is not allowed", 0),
    ("planes / 2", "operator '/' is not allowed", 0),
    ("__import__('os')", "only min(...) and max(...) may be called", 0),
    ("planes.real", "'Attribute' is not allowed in an expression", 0),
    ("[planes]", "'List' is not allowed in an expression", 0),
    ("lambda: 1", "'Lambda' is not allowed in an expression", 0),
    ("planes * widht", "unknown name 'widht'", 9),
    ("planes // 0", "division by zero", 0),
    ("style * 2", "'*' needs integers, got 'caffe' and 2", 0),
    ("planes +", "cannot parse expression: invalid syntax", 8),
    ("2.5 * planes", "constant 2.5 is not allowed (integers, strings and booleans only)", 0),
    ("planes * 100000 * 100000 * 100000", "integer result is too large", 0),
])
def test_refuses_with_column(text, message, col):
    with pytest.raises(ExprError) as e:
        evaluate(text, ENV)
    assert (e.value.message, e.value.col) == (message, col)


def test_unknown_name_hint():
    with pytest.raises(ExprError) as e:
        evaluate("planes * strde", ENV)
    assert e.value.hint == "did you mean 'stride'?"


def test_names_in():
    assert names_in("max(planes, 8) if style == 'caffe' else width") == {"planes", "style", "width"}


def test_length_limit():
    with pytest.raises(ExprError, match="longer than 400"):
        evaluate("1 + " * 200 + "1", ENV)


def test_python_syntax_warnings_stay_quiet():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ExprError, match="invalid decimal literal"):
            evaluate("1x", ENV)
