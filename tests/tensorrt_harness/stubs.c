/* Stand-ins for libnvinfer, libnvonnxparser and libnvinfer_plugin (TensorRT 10.x and 11.x).
 *
 * The TensorRT Python bindings (tensorrt_bindings/tensorrt.so) take exactly these nine entry points from the
 * three libraries, so this one file, compiled once under each library's soname, lets the real extension
 * module import on a machine without TensorRT or a GPU. The dynamic linker resolves each symbol from any
 * loaded library, so every stub carries all nine.
 *
 * Every factory returns NULL: classes, enums and signatures can be introspected, but constructing a Builder,
 * Runtime or Refitter raises TypeError ("factory function returned nullptr") instead of crashing.
 * Functions that only return NULL or 0 never read their arguments, so none are declared.
 */
#include <stddef.h>

/* libnvinfer */
void *createInferBuilder_INTERNAL(void) { return NULL; }
void *createInferRuntime_INTERNAL(void) { return NULL; }
void *createInferRefitter_INTERNAL(void) { return NULL; }
void *getPluginRegistry(void) { return NULL; }
void *getBuilderPluginRegistry(void) { return NULL; }

/* libnvonnxparser */
void *createNvOnnxParser_INTERNAL(void) { return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }

/* libnvinfer_plugin: false, as when no plugin could be registered */
int initLibNvInferPlugins(void) { return 0; }
