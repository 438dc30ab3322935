#!/usr/bin/env python3
"""Sample photos for the README quickstart: simple scenes drawn with Pillow (no downloaded photos).

    python3 tools/gen_index_data.py   # writes index-data/photos/*.jpg|png

Each scene is something a Chinese query can name (红色的圆, 蓝天白云, 夜空中的月亮, …); with the
real ViT-B-16 weights the matching picture ranks first. Deterministic.
"""
import math
import os
import random

from PIL import Image, ImageDraw

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "index-data", "photos")


def canvas(color, size=(320, 240)):
    img = Image.new("RGB", size, color)
    return img, ImageDraw.Draw(img)


def main():
    os.makedirs(OUT, exist_ok=True)
    rnd = random.Random(7)

    img, d = canvas("white")
    d.ellipse((100, 60, 220, 180), fill=(220, 20, 30))
    img.save(os.path.join(OUT, "red-circle.png"))

    img, d = canvas((250, 250, 240))
    d.rectangle((110, 70, 210, 170), fill=(20, 60, 200))
    img.save(os.path.join(OUT, "blue-square.png"))

    img, d = canvas((110, 170, 250))
    for x, y in ((60, 60), (200, 90), (130, 40)):
        d.ellipse((x, y, x + 90, y + 40), fill="white")
    d.rectangle((0, 200, 320, 240), fill=(60, 150, 60))
    img.save(os.path.join(OUT, "blue-sky-white-clouds.jpg"), quality=92)

    img, d = canvas((10, 15, 45))
    for _ in range(60):
        x, y = rnd.randrange(320), rnd.randrange(240)
        d.point((x, y), fill="white")
    d.ellipse((220, 30, 280, 90), fill=(250, 240, 200))
    img.save(os.path.join(OUT, "night-sky-moon.jpg"), quality=92)

    img = Image.new("RGB", (320, 240))
    px = img.load()
    for y in range(240):
        for x in range(320):
            t = y / 240
            px[x, y] = (int(250 - 80 * t), int(140 - 100 * t), int(60 + 60 * t))
    d = ImageDraw.Draw(img)
    d.ellipse((120, 150, 200, 230), fill=(255, 210, 80))
    d.rectangle((0, 190, 320, 240), fill=(30, 60, 120))
    img.save(os.path.join(OUT, "sunset-over-sea.jpg"), quality=92)

    img, d = canvas((240, 240, 230))
    d.polygon([(160, 30), (60, 210), (260, 210)], fill=(30, 160, 60))
    img.save(os.path.join(OUT, "green-triangle.png"))

    img, d = canvas((200, 230, 200))
    d.rectangle((150, 120, 170, 220), fill=(100, 60, 30))
    d.ellipse((100, 40, 220, 150), fill=(30, 120, 40))
    img.save(os.path.join(OUT, "a-tree.png"))

    img, d = canvas((235, 235, 235))
    d.rectangle((60, 120, 260, 180), fill=(200, 20, 20))
    d.polygon([(100, 120), (130, 85), (210, 85), (230, 120)], fill=(200, 20, 20))
    for cx in (100, 220):
        d.ellipse((cx - 22, 160, cx + 22, 204), fill=(20, 20, 20))
    img.save(os.path.join(OUT, "red-car.png"))

    img, d = canvas((255, 250, 240))
    d.rectangle((90, 120, 230, 200), fill=(250, 200, 210))
    d.rectangle((90, 110, 230, 125), fill="white")
    for x in range(110, 230, 30):
        d.rectangle((x, 80, x + 6, 110), fill=(250, 230, 90))
        d.ellipse((x - 2, 68, x + 8, 82), fill=(255, 140, 0))
    img.save(os.path.join(OUT, "birthday-cake.png"))

    img, d = canvas((245, 245, 250))
    d.ellipse((60, 40, 260, 200), fill=(250, 220, 40))
    d.ellipse((115, 95, 135, 115), fill="black")
    d.ellipse((185, 95, 205, 115), fill="black")
    d.arc((110, 110, 210, 170), 20, 160, fill="black", width=6)
    img.save(os.path.join(OUT, "smiley-face.png"))

    img, d = canvas((255, 255, 255))
    for i in range(8):
        a = i * math.pi / 4
        d.line((160, 120, 160 + 90 * math.cos(a), 120 + 90 * math.sin(a)), fill=(250, 180, 0), width=8)
    d.ellipse((120, 80, 200, 160), fill=(250, 200, 0))
    img.save(os.path.join(OUT, "the-sun.png"))

    img, d = canvas((180, 220, 250))
    d.rectangle((0, 150, 320, 240), fill=(240, 240, 250))
    d.ellipse((120, 100, 200, 170), fill="white", outline=(120, 120, 120))
    d.ellipse((135, 60, 185, 110), fill="white", outline=(120, 120, 120))
    d.polygon([(160, 85), (160, 92), (180, 88)], fill=(250, 120, 0))
    img.save(os.path.join(OUT, "snowman.png"))
    print(f"wrote {len(os.listdir(OUT))} images to {OUT}")


if __name__ == "__main__":
    main()
