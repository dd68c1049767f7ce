"""`graphres info`'s MACs line names the ops whose multiply-accumulates the model's figure counts:
those of the op table with a MACs rule (conv, linear, deform_conv, matmul) that the model has."""
import graphres
from graphres.backends.info import format_info

from conftest import ROOT


def footer(spec) -> list[str]:
    lines = format_info(graphres.compile_spec(spec).graph).splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("MACs "))
    j = next(k for k, line in enumerate(lines) if line.startswith("FLOPs "))
    return lines[i:j]  # the MACs line(s)


def test_the_counted_ops_are_those_the_model_has():
    assert footer("resnet50") == ["MACs         4,087,136,256 = 4.09 G multiply-accumulates (conv)"]
    assert footer("resnest50d") == ["MACs         5,371,160,576 = 5.37 G multiply-accumulates (conv + linear)"]
    assert footer("mmdet_faster_rcnn_r50_dcn") == [
        "MACs         4,213,128,192 = 4.21 G multiply-accumulates (conv + deform_conv)"]


def test_a_long_list_goes_to_a_second_line():
    # mmdetection's DCN + GCB backbone (two stages): conv, deform_conv and the context block's matmul
    lines = footer(ROOT / "docs" / "images" / "gcb_dcn_r50.yaml")
    assert lines[1:] == ["             (conv + deform_conv + matmul)"]
    assert lines[0].startswith("MACs ") and lines[0].endswith(" G multiply-accumulates")
    assert max(map(len, lines)) <= 80
