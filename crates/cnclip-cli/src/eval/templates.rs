//! The built-in Chinese prompt templates for zero-shot classification, written for cnclip (not
//! copied from cn_clip's or Wukong's lists). `{}` is where the label goes.

/// Default templates: varied photo styles, framings and qualities, so that their average
/// describes the class rather than one way of picturing it.
pub const DEFAULT_TEMPLATES: &[&str] = &[
    "{}",
    "一张{}的照片。",
    "这是一张{}的照片。",
    "照片里是{}。",
    "图片中有{}。",
    "这张图拍的是{}。",
    "一张关于{}的图片。",
    "{}的照片。",
    "{}的特写照片。",
    "一张{}的近景照片。",
    "远处拍到的{}。",
    "一张模糊的{}照片。",
    "一张清晰的{}照片。",
    "一张高清的{}图片。",
    "一张低分辨率的{}照片。",
    "一张光线昏暗的{}照片。",
    "一张明亮的{}照片。",
    "一张黑白的{}照片。",
    "一张裁剪过的{}照片。",
    "一张老照片，上面是{}。",
    "手机随手拍的{}。",
    "专业摄影师拍摄的{}。",
    "一幅{}的画。",
    "一幅{}的素描。",
    "一张{}的卡通图。",
    "{}的简笔画。",
    "{}的插图。",
    "一个{}的三维渲染图。",
    "{}的图标。",
    "一张小小的{}的照片。",
    "一张大大的{}的照片。",
    "一个{}。",
    "一只{}。",
    "一件{}。",
    "画面中央是{}。",
    "网上找到的一张{}图片。",
    "一张典型的{}照片。",
    "一张好看的{}照片。",
    "一张奇怪的{}照片。",
    "{}的样子。",
    "我拍的{}。",
    "看，这是{}！",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_template_has_one_slot_and_none_repeats() {
        assert!(DEFAULT_TEMPLATES.len() >= 36);
        for t in DEFAULT_TEMPLATES {
            assert_eq!(t.matches("{}").count(), 1, "{t}");
        }
        let unique: std::collections::HashSet<_> = DEFAULT_TEMPLATES.iter().collect();
        assert_eq!(unique.len(), DEFAULT_TEMPLATES.len());
    }
}
