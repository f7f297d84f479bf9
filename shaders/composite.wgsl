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
//   1 layers   read        PlaneLayer records: one per layer and plane,
//                          contiguous per scene plane, back to front.
//   2 planes   read        ScenePlane records: one per scene and plane,
//                          indexed by global_invocation_id.z.
//   3 canvas   read_write  the output planes, each at a word offset, rows
//                          padded to whole words. Holds the old canvas when
//                          the host uploaded it; the padding is don't-care.
//
// Dispatch: x over ⌈max row words / 64⌉, y over the tallest plane's rows,
// z over scenes × 3. Each invocation owns one output word (4 adjacent
// pixels of one row) and applies all of its plane's layers to it.

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
}

struct ScenePlane {
    width: u32,
    height: u32,
    // Word offset of the plane in `canvas`.
    output: u32,
    row_words: u32,
    first_layer: u32,
    layer_count: u32,
    _pad0: u32,
    _pad1: u32,
}

struct Tap {
    i0: u32,
    i1: u32,
    weight: u32,
}

@group(0) @binding(0) var<storage, read> sources: array<u32>;
@group(0) @binding(1) var<storage, read> layers: array<PlaneLayer>;
@group(0) @binding(2) var<storage, read> planes: array<ScenePlane>;
@group(0) @binding(3) var<storage, read_write> canvas: array<u32>;

fn sample(offset: u32) -> u32 {
    return (sources[offset >> 2u] >> ((offset & 3u) * 8u)) & 255u;
}

// spec::tap: the centre-aligned 8-bit fixed-point source position.
fn tap(offset: u32, dst_len: u32, crop_start: u32, crop_len: u32) -> Tap {
    let scaled = (2u * offset + 1u) * crop_len * 128u / dst_len;
    let fixed = min(select(scaled - 128u, 0u, scaled < 128u), (crop_len - 1u) * 256u);
    let i0 = crop_start + (fixed >> 8u);
    return Tap(i0, min(i0 + 1u, crop_start + crop_len - 1u), fixed & 255u);
}

// spec::bilinear on the plane at byte offset `base`.
fn bilinear(base: u32, stride: u32, tx: Tap, ty: Tap) -> u32 {
    let row0 = base + ty.i0 * stride;
    let row1 = base + ty.i1 * stride;
    let top = sample(row0 + tx.i0) * (256u - tx.weight) + sample(row0 + tx.i1) * tx.weight;
    let bottom = sample(row1 + tx.i0) * (256u - tx.weight) + sample(row1 + tx.i1) * tx.weight;
    return (top * (256u - ty.weight) + bottom * ty.weight + 32768u) >> 16u;
}

@compute @workgroup_size(64, 1, 1)
fn composite(@builtin(global_invocation_id) id: vec3<u32>) {
    let plane = planes[id.z];
    if (id.x >= plane.row_words || id.y >= plane.height) {
        return;
    }
    let word = plane.output + id.y * plane.row_words + id.x;
    let old = canvas[word];
    var px = array<u32, 4>(old & 255u, (old >> 8u) & 255u, (old >> 16u) & 255u, old >> 24u);
    let x_first = id.x * 4u;
    let x_end = min(x_first + 4u, plane.width);
    let layer_end = plane.first_layer + plane.layer_count;
    for (var l = plane.first_layer; l < layer_end; l++) {
        let layer = layers[l];
        if (id.y < layer.dst_y || id.y >= layer.dst_y + layer.dst_h) {
            continue;
        }
        let first = max(x_first, layer.dst_x);
        let end = min(x_end, layer.dst_x + layer.dst_w);
        if ((layer.mode & FILL) != 0u) {
            for (var x = first; x < end; x++) {
                px[x - x_first] = layer.mode & 255u;
            }
            continue;
        }
        let opacity = layer.mode & 255u;
        let ty = tap(id.y - layer.dst_y, layer.dst_h, layer.crop_y, layer.crop_h);
        for (var x = first; x < end; x++) {
            let tx = tap(x - layer.dst_x, layer.dst_w, layer.crop_x, layer.crop_w);
            let value = bilinear(layer.source, layer.stride, tx, ty);
            var alpha = 255u;
            if (layer.alpha != NO_ALPHA) {
                alpha = bilinear(layer.alpha, layer.stride, tx, ty);
            }
            // spec::effective_alpha and spec::blend; a = 255 gives `value`.
            let a = (alpha * opacity + 127u) / 255u;
            px[x - x_first] = (value * a + px[x - x_first] * (255u - a) + 127u) / 255u;
        }
    }
    canvas[word] = px[0] | (px[1] << 8u) | (px[2] << 16u) | (px[3] << 24u);
}
