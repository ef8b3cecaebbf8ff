// Sizes, the twin of nodes/core: images.plan_fit and functions.output_size. Pure functions with no
// imports: ComfyUI loads every .js under web/ as an extension, so this module must do nothing when
// it is imported (tests/test_docs_locales.py runs it under Node against the Python originals).

/** Python's round() for a float: half to even, on the exact binary value. */
export function roundHalfEven(x) {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** round(num / den) half to even, exactly, for non-negative integers (den > 0). */
export function divRoundHalfEven(num, den) {
  const q = Math.floor(num / den);
  const twice = 2 * (num - q * den);
  if (twice > den) return q + 1;
  if (twice < den) return q;
  return q % 2 === 0 ? q : q + 1;
}

/** images.plan_fit: the size sent for an input of width x height. One uniform scale, the one
 *  closest to 1 that brings both sides into [minSide, maxSide]; null when none exists (> 8:1). */
export function fitSize(width, height, minSide = 512, maxSide = 4096) {
  width = Math.trunc(width);
  height = Math.trunc(height);
  if (!(width > 0 && height > 0)) return null;
  const inside = (side) => side >= minSide && side <= maxSide;
  if (inside(width) && inside(height)) return { width, height, resized: false };
  const long = Math.max(width, height);
  const short = Math.min(width, height);
  if (long * minSide > short * maxSide) return null;
  const [num, den] = long > maxSide ? [maxSide, long] : [minSide, short];
  return { width: divRoundHalfEven(width * num, den), height: divRoundHalfEven(height * num, den), resized: true };
}

/** functions.output_size for a sent size: "same", "upscale" (x upscale_factor) or "expand". */
export function outputSize(rule, sent, values) {
  if (rule === "upscale") {
    const factor = Math.trunc(Number(values.upscale_factor ?? 1));
    return { width: sent.width * factor, height: sent.height * factor };
  }
  if (rule === "expand") {
    const v = (name) => Number(values[name] ?? 1.0);
    return {
      width: roundHalfEven((sent.width * (v("left_scale") + v("right_scale"))) / 2),
      height: roundHalfEven((sent.height * (v("top_scale") + v("bottom_scale"))) / 2),
    };
  }
  return { width: sent.width, height: sent.height };
}

/** Where the original sits on the expanded canvas (the half-dimension rule). */
export function expandLayout(sent, values) {
  const v = (name) => Number(values[name] ?? 1.0);
  const out = outputSize("expand", sent, values);
  return {
    ...out,
    x: Math.round((sent.width * (v("left_scale") - 1)) / 2),
    y: Math.round((sent.height * (v("top_scale") - 1)) / 2),
    originalWidth: sent.width,
    originalHeight: sent.height,
  };
}
