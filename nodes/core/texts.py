"""Every text the nodes show, in English and Chinese, as one type. The node glue reads the English
side at run time; the authoring tools (nodes/authoring/docs.py) write both into the help pages and
locales, so the schema and the translations come from the same strings.

Texts of one edit function (title, summary, prompt hint, tips, input tooltips) live in its entry
of the function table (functions.py); this module holds the shared ones and the templates."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # functions.py imports Text from here, so no import of it at run time
    from .functions import EditFunction


class Text(NamedTuple):
    en: str
    zh: str

    def get(self, lang: str) -> str:
        if lang not in LANGS:
            raise ValueError(f"no language {lang!r}; the pack has {', '.join(LANGS)}")
        return self.en if lang == "en" else self.zh


LANGS: tuple[str, ...] = Text._fields


class Port(NamedTuple):
    """A node input or output whose texts are not in the function table."""

    name: str  # the socket name, a public contract; also its English label
    label_zh: str
    tooltip: Text


class NodeTexts(NamedTuple):
    display_name: Text
    description: Text
    outputs: tuple[Port, ...]
    inputs: tuple[Port, ...] = ()  # the edit nodes' inputs come from functions.node_inputs


CATEGORY_LABEL = Text("Wanx 2.1 Edit", "万相 2.1 编辑")  # the frontend translates the last segment
CATEGORY = f"image/{CATEGORY_LABEL.en}"

# Every node of the pack outputs these two sockets, in this order.
OUTPUTS = (
    Port("images", "图像", Text("Every result, grouped per input image, in order.",
                              "全部结果，按输入图片分组并保持顺序。")),
    Port("report", "报告", Text("JSON: task ids, image counts, failures, timings.",
                              "JSON：任务 ID、图片数量、失败原因、耗时。")),
)


def edit_node(fn: EditFunction) -> NodeTexts:
    """The texts of one edit function's node."""
    return NodeTexts(
        display_name=Text(f"Wanx {fn.title_en}", f"万相 {fn.title_zh}"),
        description=Text(f"{fn.summary_en} ({fn.title_zh}; wanx2.1-imageedit `{fn.api_name}`)",
                         f"{fn.summary_zh}（{fn.title_en}；wanx2.1-imageedit `{fn.api_name}`）"),
        outputs=OUTPUTS,
    )


# The task-recovery node is not an edit function of the table.
FETCH_NODE_ID = "WanxImageEdit_FetchTask"
FETCH_NODE = NodeTexts(
    display_name=Text("Wanx Fetch Task Result", "万相 取回任务结果"),
    description=Text(
        "Returns the images of an earlier wanx2.1-imageedit task (kept 24 hours by the service). "
        "Leave task_id empty for the newest task whose results were never saved.",
        "取回之前某个 wanx2.1-imageedit 任务的图片（服务保留 24 小时）。task_id 留空则取回最近一个结果尚未保存的任务。",
    ),
    inputs=(Port("task_id", "任务 ID", Text("A task id, or empty for the newest unsaved task.",
                                           "任务 ID；留空则为最近一个未保存的任务。")),),
    outputs=(
        Port("images", "图像", Text("The task's result images.", "该任务的结果图片。")),
        Port("report", "报告", Text("JSON: the task's status, image count and result URLs.",
                                  "JSON：任务状态、图片数量和结果链接。")),
    ),
)
