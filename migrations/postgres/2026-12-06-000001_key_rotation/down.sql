DROP TABLE key_rotation;
