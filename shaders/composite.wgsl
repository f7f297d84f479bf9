// composite.wgsl: paints a batch of I420 scenes, one plane of one scene per
// z slice, with exactly the integer arithmetic of gpu/src/spec.rs, so the
// result is bit-identical to the CPU compositor.
//
// Bindings (group 0), all storage buffers of u32 words, bytes packed
// little-endian:
//   0 sources  read        every source plane of the batch (Y, U, V, and
//                          alpha at luma and chroma resolution), each at a
//                          byte offset that is a multiple of 4, rows packed
//                          tightly (stride = plane width).
//   1 layers   read        PlaneLayer records: one per layer and plane.
//   2 planes   read        ScenePlane records: one per scene and plane,
//                          indexed by global_invocation_id.z.
//   3 bins     read        per scene plane, a header of two words per bin
//                          (index of its first list word, list length),
//                          then the lists: PlaneLayer indices, back to
//                          front. A bin is BIN_WORDS words by BIN_ROWS rows.
//   4 canvas   read_write  the output planes, each at a word offset, rows
//                          padded to whole words. Holds the old canvas when
//                          the host uploaded it; the padding is don't-care.
//
// Dispatch: x over ⌈max row words / 64⌉, y over the tallest plane's rows,
// z over scenes × 3. Each invocation owns one output word (4 adjacent
// pixels of one row) and applies the layers of its bin to it.

const BIN_WORDS: u32 = 64u;
const BIN_ROWS: u32 = 16u;
const NO_ALPHA: u32 = 0xffffffffu;
// In PlaneLayer.mode: set for a fill, whose colour is in the low 8 bits;
// clear for a picture, whose opacity is in the low 8 bits.
const FILL: u32 = 0x100u;

struct PlaneLayer {
    dst_x: u32,
    dst_y: u32,
    dst_w: u32,
    dst_h: u32,
    crop_x: u32,
    crop_y: u32,
    crop_w: u32,
    crop_h: u32,
    // Byte offset of the source plane in `sources`.
    source: u32,
    // Row length of the source plane (and of its alpha plane), in bytes.
    stride: u32,
    // Byte offset of the alpha plane at this plane's resolution, or NO_ALPHA.
    alpha: u32,
    mode: u32,
    // (crop_w · 256) / dst_w and its remainder: how the numerator of the
    // horizontal tap advances from one column to the next.
    step_quotient: u32,
    step_remainder: u32,
}

struct ScenePlane {
    width: u32,
    height: u32,
    // Word offset of the plane in `canvas`.
    output: u32,
    row_words: u32,
    // Word index in `bins` of this plane's bin headers, row-major.
    bins: u32,
    bin_columns: u32,
    _pad0: u32,
    _pad1: u32,
}

struct Tap {
    i0: u32,
    i1: u32,
    weight: u32,
}

// The horizontal tap's division ((2·i + 1)·crop_w·128 / dst_w) as quotient
// and remainder, advanced column by column without dividing again.
struct Column {
    quotient: u32,
    remainder: u32,
}

@group(0) @binding(0) var<storage, read> sources: array<u32>;
@group(0) @binding(1) var<storage, read> layers: array<PlaneLayer>;
@group(0) @binding(2) var<storage, read> planes: array<ScenePlane>;
@group(0) @binding(3) var<storage, read> bins: array<u32>;
@group(0) @binding(4) var<storage, read_write> canvas: array<u32>;

fn sample(offset: u32) -> u32 {
    return (sources[offset >> 2u] >> ((offset & 3u) * 8u)) & 255u;
}

// spec::tap from the quotient (2·offset + 1)·crop_len·128 / dst_len.
fn tap_from(scaled: u32, crop_start: u32, crop_len: u32) -> Tap {
    let fixed = min(select(scaled - 128u, 0u, scaled < 128u), (crop_len - 1u) * 256u);
    let i0 = crop_start + (fixed >> 8u);
    return Tap(i0, min(i0 + 1u, crop_start + crop_len - 1u), fixed & 255u);
}

// spec::tap: the centre-aligned 8-bit fixed-point source position.
fn tap(offset: u32, dst_len: u32, crop_start: u32, crop_len: u32) -> Tap {
    return tap_from((2u * offset + 1u) * crop_len * 128u / dst_len, crop_start, crop_len);
}

// x / 255 for x < 65535 (every numerator here is at most 255·255 + 127),
// without a division; gpu/src/spec.rs checks the identity exhaustively.
fn div255(x: u32) -> u32 {
    return (x + (x >> 8u) + 1u) >> 8u;
}

// spec::bilinear on the plane at byte offset `base`.
fn bilinear(base: u32, stride: u32, tx: Tap, ty: Tap) -> u32 {
    let row0 = base + ty.i0 * stride;
    let row1 = base + ty.i1 * stride;
    let top = sample(row0 + tx.i0) * (256u - tx.weight) + sample(row0 + tx.i1) * tx.weight;
    let bottom = sample(row1 + tx.i0) * (256u - tx.weight) + sample(row1 + tx.i1) * tx.weight;
    return (top * (256u - ty.weight) + bottom * ty.weight + 32768u) >> 16u;
}

// One pixel at column `x` of a row that `layer` covers: its new value.
// `ty` is the layer's vertical tap for this row; `column` the horizontal
// tap's division for `x` if `x` is inside the layer (advanced here to the
// next column). Columns past the plane's width lie outside every layer
// (layers are inside the canvas), so row padding keeps its old value.
fn paint(layer: PlaneLayer, ty: Tap, column: ptr<function, Column>, x: u32, old: u32) -> u32 {
    if (x < layer.dst_x || x >= layer.dst_x + layer.dst_w) {
        return old;
    }
    if ((layer.mode & FILL) != 0u) {
        return layer.mode & 255u;
    }
    let tx = tap_from((*column).quotient, layer.crop_x, layer.crop_w);
    (*column).quotient += layer.step_quotient;
    (*column).remainder += layer.step_remainder;
    if ((*column).remainder >= layer.dst_w) {
        (*column).remainder -= layer.dst_w;
        (*column).quotient += 1u;
    }
    let value = bilinear(layer.source, layer.stride, tx, ty);
    var alpha = 255u;
    if (layer.alpha != NO_ALPHA) {
        alpha = bilinear(layer.alpha, layer.stride, tx, ty);
    }
    // spec::effective_alpha and spec::blend; a = 255 gives `value`.
    let a = div255(alpha * (layer.mode & 255u) + 127u);
    return div255(value * a + old * (255u - a) + 127u);
}

@compute @workgroup_size(64, 1, 1)
fn composite(@builtin(global_invocation_id) id: vec3<u32>) {
    let plane = planes[id.z];
    if (id.x >= plane.row_words || id.y >= plane.height) {
        return;
    }
    let word = plane.output + id.y * plane.row_words + id.x;
    let old = canvas[word];
    // The four pixels as separate variables rather than an indexed array,
    // which compilers tend to spill to memory.
    var p0 = old & 255u;
    var p1 = (old >> 8u) & 255u;
    var p2 = (old >> 16u) & 255u;
    var p3 = old >> 24u;
    let x = id.x * 4u;
    let bin = plane.bins + 2u * ((id.y / BIN_ROWS) * plane.bin_columns + id.x / BIN_WORDS);
    let list = bins[bin];
    let list_end = list + bins[bin + 1u];
    for (var k = list; k < list_end; k++) {
        let l = bins[k];
        // The bin's layers touch the bin, not necessarily this word.
        let dst_y = layers[l].dst_y;
        let dst_x = layers[l].dst_x;
        if (id.y < dst_y || id.y >= dst_y + layers[l].dst_h
            || x + 4u <= dst_x || x >= dst_x + layers[l].dst_w) {
            continue;
        }
        let layer = layers[l];
        var ty = Tap(0u, 0u, 0u);
        var column = Column(0u, 0u);
        if ((layer.mode & FILL) == 0u) {
            ty = tap(id.y - layer.dst_y, layer.dst_h, layer.crop_y, layer.crop_h);
            // The first of the four columns inside the layer.
            let numerator = (2u * (max(x, layer.dst_x) - layer.dst_x) + 1u) * layer.crop_w * 128u;
            let quotient = numerator / layer.dst_w;
            column = Column(quotient, numerator - quotient * layer.dst_w);
        }
        p0 = paint(layer, ty, &column, x, p0);
        p1 = paint(layer, ty, &column, x + 1u, p1);
        p2 = paint(layer, ty, &column, x + 2u, p2);
        p3 = paint(layer, ty, &column, x + 3u, p3);
    }
    canvas[word] = p0 | (p1 << 8u) | (p2 << 16u) | (p3 << 24u);
}
