"""Headless mesh rendering on CPU: moderngl over an EGL context on Mesa's llvmpipe (no display, no GPU needed).

Why moderngl + EGL (see README "Auditing labels"): moderngl 5.x is maintained and small (its ``glcontext``
backend opens a surfaceless EGL context directly), Mesa's EGL and software rasteriser come from Debian packages
(``libegl1``, ``libegl-mesa0``, ``libgl1-mesa-dri``), and a real z-buffer gives correct occlusion for SMPL's 13,776
faces at a fraction of a second per tile. pyrender would also need OSMesa or EGL and is barely maintained.

Camera model: the row's pinhole camera (OpenCV axes: x right, y down, z forward; one focal length in px; principal
point in full-image px), restricted to a window of the full image (the person's crop) and drawn at ``size`` px.
"""

import logging
from typing import Any

import numpy as np


logger = logging.getLogger(__name__)

_VERTEX_SHADER = """
#version 330
uniform vec4 window;   // crop x0, y0, width, height in full-image px
uniform vec3 camera;   // focal px, principal point x, y px
uniform vec2 depth;    // near, far (m)
in vec3 position;      // camera frame, m
out vec3 eye;
void main() {
    eye = position;
    float z = position.z;
    // full-image px -> crop px -> normalised device coordinates (GL's y points up, the image's down)
    vec2 uv = position.xy / z * camera.x + camera.yz;
    vec2 ndc = vec2(2.0 * (uv.x - window.x) / window.z - 1.0, 1.0 - 2.0 * (uv.y - window.y) / window.w);
    float n = depth.x, f = depth.y;
    float z_clip = z * (f + n) / (f - n) - 2.0 * f * n / (f - n);
    gl_Position = vec4(ndc * z, z_clip, z);  // w = z: perspective-correct interpolation and clipping
}
"""

# Flat shading from screen-space derivatives of the eye position: needs no normals and no consistent face winding
# (the tiny model's synthetic body has random faces); abs() lights both sides.
_FRAGMENT_SHADER = """
#version 330
uniform vec3 color;
in vec3 eye;
out vec4 frag;
void main() {
    vec3 normal = normalize(cross(dFdx(eye), dFdy(eye)));
    float lambert = abs(dot(normal, normalize(-eye)));
    frag = vec4(color * (0.25 + 0.75 * lambert), 1.0);
}
"""

MESH_RGB = (0.55, 0.75, 1.0)
# Supersampling factor: rendered at this multiple of the tile size and averaged down (antialiased edges).
_SUPERSAMPLE = 2


class RendererUnavailableError(RuntimeError):
    """No OpenGL context could be made (Mesa's EGL missing): the fix is the system packages step."""


class MeshRenderer:
    """One EGL context for a whole report; ``render`` draws one mesh per call.

    Raises:
        RendererUnavailableError: at construction, when EGL cannot be opened.
    """

    def __init__(self) -> None:
        import moderngl

        try:
            self._ctx = moderngl.create_standalone_context(backend="egl")
        except Exception as exc:
            raise RendererUnavailableError(
                f"cannot open a headless OpenGL context (EGL): {exc}. Install Mesa's EGL with `make system-packages` "
                "(Debian: libegl1 libegl-mesa0 libgl1-mesa-dri), or pass report.render_mesh=false"
            ) from exc
        self._program = self._ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        self._targets: dict[int, Any] = {}

    @property
    def description(self) -> str:
        """The GL implementation, e.g. ``llvmpipe (LLVM 15.0.6, 256 bits), Mesa 22.3.6``."""
        info = self._ctx.info
        return f"moderngl {self._moderngl_version()} on EGL: {info['GL_RENDERER']}, OpenGL {info['GL_VERSION']}"

    @staticmethod
    def _moderngl_version() -> str:
        import moderngl

        return str(moderngl.__version__)

    def _target(self, px: int) -> Any:
        if px not in self._targets:
            color = self._ctx.renderbuffer((px, px), components=4)
            depth = self._ctx.depth_renderbuffer((px, px))
            self._targets[px] = self._ctx.framebuffer(color_attachments=[color], depth_attachment=depth)
        return self._targets[px]

    def render(
        self,
        vertices: np.ndarray,
        faces: np.ndarray,
        focal: float,
        principal: np.ndarray,
        window_xywh: np.ndarray,
        size: int,
        color: tuple[float, float, float] = MESH_RGB,
    ) -> np.ndarray:
        """The mesh as seen in ``window_xywh`` of the full image, drawn at ``size`` x ``size`` px.

        Args:
            vertices: `(N, 3)` camera frame (m, OpenCV axes).
            faces: `(F, 3)` vertex indices.
            focal: Focal length (px); principal: `(2,)` principal point (full-image px).
            window_xywh: `(4,)` the image window (full-image px, top-left x, y, width, height) drawn, e.g. a crop.
            size: Output side (px).

        Returns:
            `(size, size, 4)` float32 RGBA in [0, 1]; alpha is the mesh's coverage (0 where no face is drawn).
        """
        import moderngl

        px = size * _SUPERSAMPLE
        finite = vertices[np.isfinite(vertices).all(axis=1)]
        in_front = finite[finite[:, 2] > 1e-3]
        if not len(in_front):
            return np.zeros((size, size, 4), np.float32)
        near = float(max(1e-3, in_front[:, 2].min() * 0.5))
        far = float(in_front[:, 2].max() * 2.0 + 1.0)
        x, y, w, h = (float(v) for v in window_xywh)
        program = self._program
        program["window"].value = (x, y, w, h)
        program["camera"].value = (float(focal), float(principal[0]), float(principal[1]))
        program["depth"].value = (near, far)
        program["color"].value = tuple(float(c) for c in color)
        triangles = np.nan_to_num(vertices.astype(np.float32))[faces.reshape(-1)]
        vbo = self._ctx.buffer(np.ascontiguousarray(triangles).tobytes())
        vao = self._ctx.vertex_array(program, [(vbo, "3f", "position")])
        target = self._target(px)
        target.use()
        target.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        self._ctx.enable(moderngl.DEPTH_TEST)
        self._ctx.disable(moderngl.CULL_FACE)
        vao.render(moderngl.TRIANGLES)
        raw = np.frombuffer(target.read(components=4, dtype="f1"), np.uint8).reshape(px, px, 4)
        vao.release()
        vbo.release()
        rgba = raw[::-1].astype(np.float32) / 255.0  # GL rows run bottom-up
        return rgba.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 4).mean(axis=(1, 3))

    def release(self) -> None:
        """Frees the GL context."""
        self._ctx.release()


def composite(image: np.ndarray, rgba: np.ndarray, opacity: float = 0.75) -> np.ndarray:
    """``rgba`` (`(H, W, 4)` float in [0, 1]) over ``image`` (`(H, W, 3)` uint8) at ``opacity``; uint8 out."""
    alpha = rgba[..., 3:4] * opacity
    out = image.astype(np.float32) * (1.0 - alpha) + rgba[..., :3] * 255.0 * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def front_view_window(vertices: np.ndarray, focal: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A camera that frames the whole mesh: the mesh moved to three times its bounding radius in front of the
    camera, and the square window its bounding sphere fits in.

    For the gallery's inset, which shows the body's pose and shape even when the row's camera puts it out of the
    crop (as the tiny model's random weights do).

    Returns:
        ``(vertices (N, 3) m, principal (2,) px, window_xywh (4,) px)`` for :meth:`MeshRenderer.render`.
    """
    finite = vertices[np.isfinite(vertices).all(axis=1)]
    if not len(finite):
        return vertices, np.zeros(2), np.array([-1.0, -1.0, 2.0, 2.0])
    center = (finite.min(axis=0) + finite.max(axis=0)) / 2
    radius = max(float(np.linalg.norm(finite - center, axis=1).max()), 1e-3)
    distance = 3.0 * radius  # the bounding sphere then spans focal * r / (d - r) px from the centre, at most
    moved = vertices - center + np.array([0.0, 0.0, distance])
    half = 1.05 * focal * radius / (distance - radius)
    return moved, np.zeros(2), np.array([-half, -half, 2 * half, 2 * half])
