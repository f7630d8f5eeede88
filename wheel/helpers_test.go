package wheel

import "unsafe"

const sizeofTimer = unsafe.Sizeof(Timer{})
