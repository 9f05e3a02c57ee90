from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FrameEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_ENCODING_UNSPECIFIED: _ClassVar[FrameEncoding]
    FRAME_ENCODING_JPEG: _ClassVar[FrameEncoding]
    FRAME_ENCODING_PNG: _ClassVar[FrameEncoding]
    FRAME_ENCODING_RAW: _ClassVar[FrameEncoding]

class ExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_FORMAT_UNSPECIFIED: _ClassVar[ExportFormat]
    EXPORT_FORMAT_SNAPSHOT: _ClassVar[ExportFormat]
    EXPORT_FORMAT_PLY: _ClassVar[ExportFormat]
FRAME_ENCODING_UNSPECIFIED: FrameEncoding
FRAME_ENCODING_JPEG: FrameEncoding
FRAME_ENCODING_PNG: FrameEncoding
FRAME_ENCODING_RAW: FrameEncoding
EXPORT_FORMAT_UNSPECIFIED: ExportFormat
EXPORT_FORMAT_SNAPSHOT: ExportFormat
EXPORT_FORMAT_PLY: ExportFormat

class Vec3(_message.Message):
    __slots__ = ("x", "y", "z")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    z: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., z: _Optional[float] = ...) -> None: ...

class Pose(_message.Message):
    __slots__ = ("c2w",)
    C2W_FIELD_NUMBER: _ClassVar[int]
    c2w: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, c2w: _Optional[_Iterable[float]] = ...) -> None: ...

class CameraIntrinsics(_message.Message):
    __slots__ = ("fx", "fy", "cx", "cy", "width", "height")
    FX_FIELD_NUMBER: _ClassVar[int]
    FY_FIELD_NUMBER: _ClassVar[int]
    CX_FIELD_NUMBER: _ClassVar[int]
    CY_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    def __init__(self, fx: _Optional[float] = ..., fy: _Optional[float] = ..., cx: _Optional[float] = ..., cy: _Optional[float] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class NormalizedIntrinsics(_message.Message):
    __slots__ = ("fx_over_width", "fy_over_height", "cx_over_width", "cy_over_height")
    FX_OVER_WIDTH_FIELD_NUMBER: _ClassVar[int]
    FY_OVER_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CX_OVER_WIDTH_FIELD_NUMBER: _ClassVar[int]
    CY_OVER_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    fx_over_width: float
    fy_over_height: float
    cx_over_width: float
    cy_over_height: float
    def __init__(self, fx_over_width: _Optional[float] = ..., fy_over_height: _Optional[float] = ..., cx_over_width: _Optional[float] = ..., cy_over_height: _Optional[float] = ...) -> None: ...

class Resolution(_message.Message):
    __slots__ = ("width", "height")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Trajectory(_message.Message):
    __slots__ = ("poses",)
    POSES_FIELD_NUMBER: _ClassVar[int]
    poses: _containers.RepeatedCompositeFieldContainer[Pose]
    def __init__(self, poses: _Optional[_Iterable[_Union[Pose, _Mapping]]] = ...) -> None: ...

class OfficialTrajectory(_message.Message):
    __slots__ = ("w2c", "intrinsics")
    W2C_FIELD_NUMBER: _ClassVar[int]
    INTRINSICS_FIELD_NUMBER: _ClassVar[int]
    w2c: _containers.RepeatedCompositeFieldContainer[Pose]
    intrinsics: NormalizedIntrinsics
    def __init__(self, w2c: _Optional[_Iterable[_Union[Pose, _Mapping]]] = ..., intrinsics: _Optional[_Union[NormalizedIntrinsics, _Mapping]] = ...) -> None: ...

class SceneSource(_message.Message):
    __slots__ = ("name", "seed", "resolution", "fov_deg")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    FOV_DEG_FIELD_NUMBER: _ClassVar[int]
    name: str
    seed: int
    resolution: Resolution
    fov_deg: float
    def __init__(self, name: _Optional[str] = ..., seed: _Optional[int] = ..., resolution: _Optional[_Union[Resolution, _Mapping]] = ..., fov_deg: _Optional[float] = ...) -> None: ...

class ImageSource(_message.Message):
    __slots__ = ("image", "depth", "intrinsics", "dynamic_mask")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    INTRINSICS_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_MASK_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    depth: bytes
    intrinsics: CameraIntrinsics
    dynamic_mask: bytes
    def __init__(self, image: _Optional[bytes] = ..., depth: _Optional[bytes] = ..., intrinsics: _Optional[_Union[CameraIntrinsics, _Mapping]] = ..., dynamic_mask: _Optional[bytes] = ...) -> None: ...

class PointCloudSource(_message.Message):
    __slots__ = ("ply", "intrinsics", "start")
    PLY_FIELD_NUMBER: _ClassVar[int]
    INTRINSICS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    ply: bytes
    intrinsics: CameraIntrinsics
    start: Pose
    def __init__(self, ply: _Optional[bytes] = ..., intrinsics: _Optional[_Union[CameraIntrinsics, _Mapping]] = ..., start: _Optional[_Union[Pose, _Mapping]] = ...) -> None: ...

class CaseSource(_message.Message):
    __slots__ = ("image", "intrinsics", "trajectory", "dynamic_mask", "width")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    INTRINSICS_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_MASK_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    intrinsics: NormalizedIntrinsics
    trajectory: OfficialTrajectory
    dynamic_mask: bytes
    width: int
    def __init__(self, image: _Optional[bytes] = ..., intrinsics: _Optional[_Union[NormalizedIntrinsics, _Mapping]] = ..., trajectory: _Optional[_Union[OfficialTrajectory, _Mapping]] = ..., dynamic_mask: _Optional[bytes] = ..., width: _Optional[int] = ...) -> None: ...

class CreateWorldRequest(_message.Message):
    __slots__ = ("world_id", "prompt", "scene", "image", "point_cloud", "official_case")
    WORLD_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SCENE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    POINT_CLOUD_FIELD_NUMBER: _ClassVar[int]
    OFFICIAL_CASE_FIELD_NUMBER: _ClassVar[int]
    world_id: str
    prompt: str
    scene: SceneSource
    image: ImageSource
    point_cloud: PointCloudSource
    official_case: CaseSource
    def __init__(self, world_id: _Optional[str] = ..., prompt: _Optional[str] = ..., scene: _Optional[_Union[SceneSource, _Mapping]] = ..., image: _Optional[_Union[ImageSource, _Mapping]] = ..., point_cloud: _Optional[_Union[PointCloudSource, _Mapping]] = ..., official_case: _Optional[_Union[CaseSource, _Mapping]] = ...) -> None: ...

class WorldStats(_message.Message):
    __slots__ = ("memory_points", "history_frames", "clips_generated", "snapshot_bytes", "memory_bytes", "index_bytes")
    MEMORY_POINTS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FRAMES_FIELD_NUMBER: _ClassVar[int]
    CLIPS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    INDEX_BYTES_FIELD_NUMBER: _ClassVar[int]
    memory_points: int
    history_frames: int
    clips_generated: int
    snapshot_bytes: int
    memory_bytes: int
    index_bytes: int
    def __init__(self, memory_points: _Optional[int] = ..., history_frames: _Optional[int] = ..., clips_generated: _Optional[int] = ..., snapshot_bytes: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., index_bytes: _Optional[int] = ...) -> None: ...

class WorldInfo(_message.Message):
    __slots__ = ("world_id", "source", "prompt", "created_unix_ns", "intrinsics", "origin", "current", "stats", "controlled", "case_trajectory", "node_id", "level_up")
    WORLD_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    INTRINSICS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    CONTROLLED_FIELD_NUMBER: _ClassVar[int]
    CASE_TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LEVEL_UP_FIELD_NUMBER: _ClassVar[int]
    world_id: str
    source: str
    prompt: str
    created_unix_ns: int
    intrinsics: CameraIntrinsics
    origin: Pose
    current: Pose
    stats: WorldStats
    controlled: bool
    case_trajectory: Trajectory
    node_id: str
    level_up: Vec3
    def __init__(self, world_id: _Optional[str] = ..., source: _Optional[str] = ..., prompt: _Optional[str] = ..., created_unix_ns: _Optional[int] = ..., intrinsics: _Optional[_Union[CameraIntrinsics, _Mapping]] = ..., origin: _Optional[_Union[Pose, _Mapping]] = ..., current: _Optional[_Union[Pose, _Mapping]] = ..., stats: _Optional[_Union[WorldStats, _Mapping]] = ..., controlled: _Optional[bool] = ..., case_trajectory: _Optional[_Union[Trajectory, _Mapping]] = ..., node_id: _Optional[str] = ..., level_up: _Optional[_Union[Vec3, _Mapping]] = ...) -> None: ...

class GetWorldRequest(_message.Message):
    __slots__ = ("world_id",)
    WORLD_ID_FIELD_NUMBER: _ClassVar[int]
    world_id: str
    def __init__(self, world_id: _Optional[str] = ...) -> None: ...

class ListWorldsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListWorldsResponse(_message.Message):
    __slots__ = ("worlds", "next_page_token")
    WORLDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    worlds: _containers.RepeatedCompositeFieldContainer[WorldInfo]
    next_page_token: str
    def __init__(self, worlds: _Optional[_Iterable[_Union[WorldInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteWorldRequest(_message.Message):
    __slots__ = ("world_id",)
    WORLD_ID_FIELD_NUMBER: _ClassVar[int]
    world_id: str
    def __init__(self, world_id: _Optional[str] = ...) -> None: ...

class DeleteWorldResponse(_message.Message):
    __slots__ = ("world_id",)
    WORLD_ID_FIELD_NUMBER: _ClassVar[int]
    world_id: str
    def __init__(self, world_id: _Optional[str] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("frame_index", "clip_id", "pose", "intrinsics", "last_action_seq", "server_time_ns", "encoding", "width", "height", "data", "session_frame", "stats", "collided")
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    CLIP_ID_FIELD_NUMBER: _ClassVar[int]
    POSE_FIELD_NUMBER: _ClassVar[int]
    INTRINSICS_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTION_SEQ_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SESSION_FRAME_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    COLLIDED_FIELD_NUMBER: _ClassVar[int]
    frame_index: int
    clip_id: int
    pose: Pose
    intrinsics: CameraIntrinsics
    last_action_seq: int
    server_time_ns: int
    encoding: FrameEncoding
    width: int
    height: int
    data: bytes
    session_frame: int
    stats: SessionStats
    collided: bool
    def __init__(self, frame_index: _Optional[int] = ..., clip_id: _Optional[int] = ..., pose: _Optional[_Union[Pose, _Mapping]] = ..., intrinsics: _Optional[_Union[CameraIntrinsics, _Mapping]] = ..., last_action_seq: _Optional[int] = ..., server_time_ns: _Optional[int] = ..., encoding: _Optional[_Union[FrameEncoding, str]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., data: _Optional[bytes] = ..., session_frame: _Optional[int] = ..., stats: _Optional[_Union[SessionStats, _Mapping]] = ..., collided: _Optional[bool] = ...) -> None: ...

class ClipLengths(_message.Message):
    __slots__ = ("first_clip_frames", "clip_frames", "preceding_frames")
    FIRST_CLIP_FRAMES_FIELD_NUMBER: _ClassVar[int]
    CLIP_FRAMES_FIELD_NUMBER: _ClassVar[int]
    PRECEDING_FRAMES_FIELD_NUMBER: _ClassVar[int]
    first_clip_frames: int
    clip_frames: int
    preceding_frames: int
    def __init__(self, first_clip_frames: _Optional[int] = ..., clip_frames: _Optional[int] = ..., preceding_frames: _Optional[int] = ...) -> None: ...

class PlayStart(_message.Message):
    __slots__ = ("world_id", "resolution", "fps", "prompt", "encoding", "jpeg_quality", "clip", "no_recording", "seed", "heartbeat_interval_s", "max_pending_frames", "lockstep", "stats_in_frame")
    WORLD_ID_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    NO_RECORDING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    MAX_PENDING_FRAMES_FIELD_NUMBER: _ClassVar[int]
    LOCKSTEP_FIELD_NUMBER: _ClassVar[int]
    STATS_IN_FRAME_FIELD_NUMBER: _ClassVar[int]
    world_id: str
    resolution: Resolution
    fps: float
    prompt: str
    encoding: FrameEncoding
    jpeg_quality: int
    clip: ClipLengths
    no_recording: bool
    seed: int
    heartbeat_interval_s: float
    max_pending_frames: int
    lockstep: bool
    stats_in_frame: bool
    def __init__(self, world_id: _Optional[str] = ..., resolution: _Optional[_Union[Resolution, _Mapping]] = ..., fps: _Optional[float] = ..., prompt: _Optional[str] = ..., encoding: _Optional[_Union[FrameEncoding, str]] = ..., jpeg_quality: _Optional[int] = ..., clip: _Optional[_Union[ClipLengths, _Mapping]] = ..., no_recording: _Optional[bool] = ..., seed: _Optional[int] = ..., heartbeat_interval_s: _Optional[float] = ..., max_pending_frames: _Optional[int] = ..., lockstep: _Optional[bool] = ..., stats_in_frame: _Optional[bool] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("move_forward", "move_right", "move_up", "yaw_rate_rad_s", "pitch_rate_rad_s", "yaw_delta_rad", "pitch_delta_rad", "sprint", "dt_s", "seq", "client_time_ns")
    MOVE_FORWARD_FIELD_NUMBER: _ClassVar[int]
    MOVE_RIGHT_FIELD_NUMBER: _ClassVar[int]
    MOVE_UP_FIELD_NUMBER: _ClassVar[int]
    YAW_RATE_RAD_S_FIELD_NUMBER: _ClassVar[int]
    PITCH_RATE_RAD_S_FIELD_NUMBER: _ClassVar[int]
    YAW_DELTA_RAD_FIELD_NUMBER: _ClassVar[int]
    PITCH_DELTA_RAD_FIELD_NUMBER: _ClassVar[int]
    SPRINT_FIELD_NUMBER: _ClassVar[int]
    DT_S_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    move_forward: float
    move_right: float
    move_up: float
    yaw_rate_rad_s: float
    pitch_rate_rad_s: float
    yaw_delta_rad: float
    pitch_delta_rad: float
    sprint: bool
    dt_s: float
    seq: int
    client_time_ns: int
    def __init__(self, move_forward: _Optional[float] = ..., move_right: _Optional[float] = ..., move_up: _Optional[float] = ..., yaw_rate_rad_s: _Optional[float] = ..., pitch_rate_rad_s: _Optional[float] = ..., yaw_delta_rad: _Optional[float] = ..., pitch_delta_rad: _Optional[float] = ..., sprint: _Optional[bool] = ..., dt_s: _Optional[float] = ..., seq: _Optional[int] = ..., client_time_ns: _Optional[int] = ...) -> None: ...

class PromptChange(_message.Message):
    __slots__ = ("prompt",)
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    def __init__(self, prompt: _Optional[str] = ...) -> None: ...

class PlayRequest(_message.Message):
    __slots__ = ("start", "action", "prompt")
    START_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    start: PlayStart
    action: Action
    prompt: PromptChange
    def __init__(self, start: _Optional[_Union[PlayStart, _Mapping]] = ..., action: _Optional[_Union[Action, _Mapping]] = ..., prompt: _Optional[_Union[PromptChange, _Mapping]] = ...) -> None: ...

class PlayStarted(_message.Message):
    __slots__ = ("session_id", "world", "fps", "clip", "recording_id", "lockstep")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WORLD_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    LOCKSTEP_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    world: WorldInfo
    fps: float
    clip: ClipLengths
    recording_id: str
    lockstep: bool
    def __init__(self, session_id: _Optional[str] = ..., world: _Optional[_Union[WorldInfo, _Mapping]] = ..., fps: _Optional[float] = ..., clip: _Optional[_Union[ClipLengths, _Mapping]] = ..., recording_id: _Optional[str] = ..., lockstep: _Optional[bool] = ...) -> None: ...

class SessionStats(_message.Message):
    __slots__ = ("clip_id", "generate_ms", "update_ms", "memory_points", "pending_frames", "queue_depth", "frames_dropped", "poses_dropped", "held_fps")
    CLIP_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATE_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_POINTS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FRAMES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    POSES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    HELD_FPS_FIELD_NUMBER: _ClassVar[int]
    clip_id: int
    generate_ms: float
    update_ms: float
    memory_points: int
    pending_frames: int
    queue_depth: int
    frames_dropped: int
    poses_dropped: int
    held_fps: float
    def __init__(self, clip_id: _Optional[int] = ..., generate_ms: _Optional[float] = ..., update_ms: _Optional[float] = ..., memory_points: _Optional[int] = ..., pending_frames: _Optional[int] = ..., queue_depth: _Optional[int] = ..., frames_dropped: _Optional[int] = ..., poses_dropped: _Optional[int] = ..., held_fps: _Optional[float] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("server_time_ns", "last_frame_index", "pose", "last_action_seq", "collided")
    SERVER_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    LAST_FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    POSE_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTION_SEQ_FIELD_NUMBER: _ClassVar[int]
    COLLIDED_FIELD_NUMBER: _ClassVar[int]
    server_time_ns: int
    last_frame_index: int
    pose: Pose
    last_action_seq: int
    collided: bool
    def __init__(self, server_time_ns: _Optional[int] = ..., last_frame_index: _Optional[int] = ..., pose: _Optional[_Union[Pose, _Mapping]] = ..., last_action_seq: _Optional[int] = ..., collided: _Optional[bool] = ...) -> None: ...

class PlayResponse(_message.Message):
    __slots__ = ("started", "frame", "stats", "heartbeat")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    started: PlayStarted
    frame: Frame
    stats: SessionStats
    heartbeat: Heartbeat
    def __init__(self, started: _Optional[_Union[PlayStarted, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ..., stats: _Optional[_Union[SessionStats, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("world_id", "trajectory", "official", "prompt", "seed", "encoding", "jpeg_quality", "clip")
    WORLD_ID_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    OFFICIAL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    world_id: str
    trajectory: Trajectory
    official: OfficialTrajectory
    prompt: str
    seed: int
    encoding: FrameEncoding
    jpeg_quality: int
    clip: ClipLengths
    def __init__(self, world_id: _Optional[str] = ..., trajectory: _Optional[_Union[Trajectory, _Mapping]] = ..., official: _Optional[_Union[OfficialTrajectory, _Mapping]] = ..., prompt: _Optional[str] = ..., seed: _Optional[int] = ..., encoding: _Optional[_Union[FrameEncoding, str]] = ..., jpeg_quality: _Optional[int] = ..., clip: _Optional[_Union[ClipLengths, _Mapping]] = ...) -> None: ...

class RenderRequest(_message.Message):
    __slots__ = ("world_id", "pose", "resolution")
    WORLD_ID_FIELD_NUMBER: _ClassVar[int]
    POSE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    world_id: str
    pose: Pose
    resolution: Resolution
    def __init__(self, world_id: _Optional[str] = ..., pose: _Optional[_Union[Pose, _Mapping]] = ..., resolution: _Optional[_Union[Resolution, _Mapping]] = ...) -> None: ...

class RenderResponse(_message.Message):
    __slots__ = ("intrinsics", "rgb_png", "depth_m", "valid_png")
    INTRINSICS_FIELD_NUMBER: _ClassVar[int]
    RGB_PNG_FIELD_NUMBER: _ClassVar[int]
    DEPTH_M_FIELD_NUMBER: _ClassVar[int]
    VALID_PNG_FIELD_NUMBER: _ClassVar[int]
    intrinsics: CameraIntrinsics
    rgb_png: bytes
    depth_m: bytes
    valid_png: bytes
    def __init__(self, intrinsics: _Optional[_Union[CameraIntrinsics, _Mapping]] = ..., rgb_png: _Optional[bytes] = ..., depth_m: _Optional[bytes] = ..., valid_png: _Optional[bytes] = ...) -> None: ...

class BoxRegion(_message.Message):
    __slots__ = ("center", "half_extents_m", "rotation")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    HALF_EXTENTS_M_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FIELD_NUMBER: _ClassVar[int]
    center: Vec3
    half_extents_m: Vec3
    rotation: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, center: _Optional[_Union[Vec3, _Mapping]] = ..., half_extents_m: _Optional[_Union[Vec3, _Mapping]] = ..., rotation: _Optional[_Iterable[float]] = ...) -> None: ...

class SphereRegion(_message.Message):
    __slots__ = ("center", "radius_m")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    RADIUS_M_FIELD_NUMBER: _ClassVar[int]
    center: Vec3
    radius_m: float
    def __init__(self, center: _Optional[_Union[Vec3, _Mapping]] = ..., radius_m: _Optional[float] = ...) -> None: ...

class Region(_message.Message):
    __slots__ = ("box", "sphere")
    BOX_FIELD_NUMBER: _ClassVar[int]
    SPHERE_FIELD_NUMBER: _ClassVar[int]
    box: BoxRegion
    sphere: SphereRegion
    def __init__(self, box: _Optional[_Union[BoxRegion, _Mapping]] = ..., sphere: _Optional[_Union[SphereRegion, _Mapping]] = ...) -> None: ...

class Color(_message.Message):
    __slots__ = ("r", "g", "b")
    R_FIELD_NUMBER: _ClassVar[int]
    G_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    r: int
    g: int
    b: int
    def __init__(self, r: _Optional[int] = ..., g: _Optional[int] = ..., b: _Optional[int] = ...) -> None: ...

class RemoveEdit(_message.Message):
    __slots__ = ("region",)
    REGION_FIELD_NUMBER: _ClassVar[int]
    region: Region
    def __init__(self, region: _Optional[_Union[Region, _Mapping]] = ...) -> None: ...

class RecolorEdit(_message.Message):
    __slots__ = ("region", "color")
    REGION_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    region: Region
    color: Color
    def __init__(self, region: _Optional[_Union[Region, _Mapping]] = ..., color: _Optional[_Union[Color, _Mapping]] = ...) -> None: ...

class MoveEdit(_message.Message):
    __slots__ = ("region", "translation_m", "rotation")
    REGION_FIELD_NUMBER: _ClassVar[int]
    TRANSLATION_M_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FIELD_NUMBER: _ClassVar[int]
    region: Region
    translation_m: Vec3
    rotation: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, region: _Optional[_Union[Region, _Mapping]] = ..., translation_m: _Optional[_Union[Vec3, _Mapping]] = ..., rotation: _Optional[_Iterable[float]] = ...) -> None: ...

class InsertEdit(_message.Message):
    __slots__ = ("ply",)
    PLY_FIELD_NUMBER: _ClassVar[int]
    ply: bytes
    def __init__(self, ply: _Optional[bytes] = ...) -> None: ...

class EditRequest(_message.Message):
    __slots__ = ("world_id", "remove", "recolor", "move", "insert")
    WORLD_ID_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    RECOLOR_FIELD_NUMBER: _ClassVar[int]
    MOVE_FIELD_NUMBER: _ClassVar[int]
    INSERT_FIELD_NUMBER: _ClassVar[int]
    world_id: str
    remove: RemoveEdit
    recolor: RecolorEdit
    move: MoveEdit
    insert: InsertEdit
    def __init__(self, world_id: _Optional[str] = ..., remove: _Optional[_Union[RemoveEdit, _Mapping]] = ..., recolor: _Optional[_Union[RecolorEdit, _Mapping]] = ..., move: _Optional[_Union[MoveEdit, _Mapping]] = ..., insert: _Optional[_Union[InsertEdit, _Mapping]] = ...) -> None: ...

class EditResponse(_message.Message):
    __slots__ = ("points_affected", "stats")
    POINTS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    points_affected: int
    stats: WorldStats
    def __init__(self, points_affected: _Optional[int] = ..., stats: _Optional[_Union[WorldStats, _Mapping]] = ...) -> None: ...

class ExportWorldRequest(_message.Message):
    __slots__ = ("world_id", "format")
    WORLD_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    world_id: str
    format: ExportFormat
    def __init__(self, world_id: _Optional[str] = ..., format: _Optional[_Union[ExportFormat, str]] = ...) -> None: ...

class DataChunk(_message.Message):
    __slots__ = ("data", "offset", "total_bytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    total_bytes: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class ImportHeader(_message.Message):
    __slots__ = ("world_id", "format", "intrinsics", "start", "prompt")
    WORLD_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    INTRINSICS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    world_id: str
    format: ExportFormat
    intrinsics: CameraIntrinsics
    start: Pose
    prompt: str
    def __init__(self, world_id: _Optional[str] = ..., format: _Optional[_Union[ExportFormat, str]] = ..., intrinsics: _Optional[_Union[CameraIntrinsics, _Mapping]] = ..., start: _Optional[_Union[Pose, _Mapping]] = ..., prompt: _Optional[str] = ...) -> None: ...

class ImportWorldRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ImportHeader
    chunk: DataChunk
    def __init__(self, header: _Optional[_Union[ImportHeader, _Mapping]] = ..., chunk: _Optional[_Union[DataChunk, _Mapping]] = ...) -> None: ...

class RecordingInfo(_message.Message):
    __slots__ = ("recording_id", "world_id", "session_id", "start_unix_ns", "end_unix_ns", "frames", "actions", "size_bytes", "complete")
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    WORLD_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    START_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    recording_id: str
    world_id: str
    session_id: str
    start_unix_ns: int
    end_unix_ns: int
    frames: int
    actions: int
    size_bytes: int
    complete: bool
    def __init__(self, recording_id: _Optional[str] = ..., world_id: _Optional[str] = ..., session_id: _Optional[str] = ..., start_unix_ns: _Optional[int] = ..., end_unix_ns: _Optional[int] = ..., frames: _Optional[int] = ..., actions: _Optional[int] = ..., size_bytes: _Optional[int] = ..., complete: _Optional[bool] = ...) -> None: ...

class ListRecordingsRequest(_message.Message):
    __slots__ = ("world_id", "page_size", "page_token")
    WORLD_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    world_id: str
    page_size: int
    page_token: str
    def __init__(self, world_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRecordingsResponse(_message.Message):
    __slots__ = ("recordings", "next_page_token")
    RECORDINGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    recordings: _containers.RepeatedCompositeFieldContainer[RecordingInfo]
    next_page_token: str
    def __init__(self, recordings: _Optional[_Iterable[_Union[RecordingInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReplayRequest(_message.Message):
    __slots__ = ("recording_id", "start_frame", "speed")
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    recording_id: str
    start_frame: int
    speed: float
    def __init__(self, recording_id: _Optional[str] = ..., start_frame: _Optional[int] = ..., speed: _Optional[float] = ...) -> None: ...
